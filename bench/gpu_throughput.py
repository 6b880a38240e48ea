"""sentence-embed on a GPU: offline `session.run` on the CUDA provider at batch 32, 128 and 512
(tokenising included) against `modelfn serve --workers N` with `accelerator = "gpu"` at
concurrency 256 (budget: >= 15,000 requests/s, p99 <= 100 ms), measured in the same run.
Where ONNX Runtime has no CUDA provider it says so and exits 0 (`--cpu` runs the same steps on
the CPU provider, to check the script itself). Loopback only; prints figures, asserts nothing.

    python bench/gpu_throughput.py [--workers 4] [--max-batch 256] [--requests 40000] [--concurrency 256]
                                   [--clients 4] [--json FILE]

`--workers` and `--max-batch` take comma-separated lists (`--workers 2,4,8 --max-batch 128,256`):
every pair is served and measured in turn against the same offline figures, so one visit to a
GPU machine answers which setting to make the default; `--json` also writes the figures there.

The load comes from `wrk` with `--clients` threads where it is installed, else from the raw
Python client in `--clients` processes (one process tops out near the rate this budget asks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from load import ServerProcess, closed_loop, wrk_load
from server_throughput import BODIES, FUNCTION, PATH, SENTENCES, _functions_dir


def offline(provider: str, batch: int, seconds: float = 5.0) -> float:
    sys.path.insert(0, str(FUNCTION))
    import hooks  # type: ignore[import-not-found]
    import onnxruntime as ort

    session = ort.InferenceSession(str(FUNCTION / "model.onnx"), providers=[provider])
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
    session.run(None, hooks.tokenize(texts))
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, hooks.tokenize(texts))
        done += batch
    return done / (time.perf_counter() - started)


def _client(port: int, bodies: list[bytes], requests: int, concurrency: int) -> tuple[float, list[float]]:
    return asyncio.run(closed_loop(port, PATH, bodies, requests, concurrency))


def drive(port: int, bodies: list[bytes], requests: int, concurrency: int, clients: int) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 in ms: wrk with `clients` threads, or that many raw-client processes."""
    if shutil.which("wrk"):
        seconds = max(5, round(requests / 15_000))
        figures = wrk_load(port, PATH, bodies, seconds, concurrency, threads=clients)
        return figures["per_second"], figures["p50_ms"], figures["p99_ms"]
    share = [concurrency // clients + (i < concurrency % clients) for i in range(clients)]
    with ProcessPoolExecutor(clients) as pool:
        parts = list(pool.map(_client, [port] * clients, [bodies] * clients, [requests // clients] * clients, share))
    latencies = sorted(x for _, part in parts for x in part)
    rate = sum(part_rate for part_rate, _ in parts)
    return rate, latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def serve(cuda: bool, workers: int, max_batch: int, args: argparse.Namespace) -> tuple[float, float, float]:
    """`modelfn serve --workers N` at `max_batch_size`, warmed, then measured: requests/s, p50, p99."""
    os.environ["MODELFN_WORKERS"] = str(workers)
    functions = _functions_dir(True, max_batch, gpu=cuda)
    server = ServerProcess("sentence-embed", functions)
    try:
        server.wait_ready()
        asyncio.run(closed_loop(server.port, PATH, BODIES, min(2000, args.requests), args.concurrency))  # warm-up
        return drive(server.port, BODIES, args.requests, args.concurrency, args.clients)
    finally:
        server.stop()
        shutil.rmtree(functions, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=_counts, default=[4], help="server processes; a list: each in turn")
    parser.add_argument("--max-batch", type=_counts, default=[256], help="max_batch_size; a list: each in turn")
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--clients", type=int, default=4, help="wrk threads, or raw-client processes")
    parser.add_argument("--cpu", action="store_true", help="no GPU: run the same steps on the CPU provider")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if not cuda and not args.cpu:
        print(f"skipped: ONNX Runtime here offers {ort.get_available_providers()}, no CUDA provider")
        return 0
    provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    print(f"sentence-embed on {provider}, {os.cpu_count()} CPUs")
    offline_rates: dict[int, int] = {}
    served: list[dict[str, float]] = []
    for batch in (32, 128, 512):
        offline_rates[batch] = round(offline(provider, batch))
        print(f"offline session.run, batch {batch:3}: {offline_rates[batch]:9} sentences/s")
    for workers in args.workers:
        for max_batch in args.max_batch:
            rate, p50, p99 = serve(cuda, workers, max_batch, args)
            setting = {"workers": workers, "max_batch": max_batch}
            served.append({**setting, "per_second": rate, "p50_ms": p50, "p99_ms": p99})
            print(
                f"modelfn serve --workers {workers}, max_batch_size {max_batch}, c={args.concurrency}: "
                f"{rate:9.0f} requests/s  p50 {p50:.1f} ms  p99 {p99:.1f} ms "
                "(budget >= 15,000 requests/s, p99 <= 100 ms)"
            )
            if args.json:  # after every setting: what was measured survives a run cut short
                document = {"provider": provider, "cpus": os.cpu_count(), "offline": offline_rates, "served": served}
                args.json.write_text(json.dumps(document, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
