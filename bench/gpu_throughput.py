"""sentence-embed on a GPU: offline `session.run` on the CUDA provider at batch 32, 128 and 512
(tokenising included) against `modelfn serve --workers N` with `accelerator = "gpu"` at
concurrency 256 (budget: >= 15,000 requests/s, p99 <= 100 ms), measured in the same run.
Where ONNX Runtime has no CUDA provider it says so and exits 0 (`--cpu` runs the same steps on
the CPU provider, to check the script itself). Loopback only; prints figures, asserts nothing.

    python bench/gpu_throughput.py [--workers 4] [--max-batch 256] [--requests 40000] [--concurrency 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from load import RawConnection, ServerProcess
from server_throughput import FUNCTION, SENTENCES

PATH = "/functions/sentence-embed"


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


def functions_dir(max_batch: int, gpu: bool) -> Path:
    root = Path(tempfile.mkdtemp(prefix="modelfn-gpu-bench-"))
    folder = root / "sentence-embed"
    folder.mkdir()
    for name in ("hooks.py", "tokenizer.json"):
        shutil.copy(FUNCTION / name, folder / name)
    try:
        os.link(FUNCTION / "model.onnx", folder / "model.onnx")
    except OSError:
        shutil.copy(FUNCTION / "model.onnx", folder / "model.onnx")
    toml = (FUNCTION / "function.toml").read_text()
    toml = toml.replace("max_batch_size = 32", f"max_batch_size = {max_batch}")
    if gpu:
        toml = toml.replace("[runtime]\n", '[runtime]\naccelerator = "gpu"\n')
    (folder / "function.toml").write_text(toml)
    return root


async def drive(port: int, requests: int, concurrency: int) -> tuple[float, list[float]]:
    bodies = [json.dumps({"text": s}).encode() for s in SENTENCES]
    latencies: list[float] = []
    sent = iter(range(requests))

    async def worker() -> None:
        connection = RawConnection("127.0.0.1", port, PATH, bodies)
        try:
            for index in sent:
                started = time.perf_counter()
                status, _ = await connection.send(index)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise RuntimeError(f"status {status}")
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started), sorted(latencies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--cpu", action="store_true", help="no GPU: run the same steps on the CPU provider")
    args = parser.parse_args()
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if not cuda and not args.cpu:
        print(f"skipped: ONNX Runtime here offers {ort.get_available_providers()}, no CUDA provider")
        return 0
    provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    print(f"sentence-embed on {provider}, {os.cpu_count()} CPUs")
    for batch in (32, 128, 512):
        print(f"offline session.run, batch {batch:3}: {offline(provider, batch):9.0f} sentences/s")
    os.environ["MODELFN_WORKERS"] = str(args.workers)
    server = ServerProcess("sentence-embed", functions_dir(args.max_batch, gpu=cuda))
    try:
        server.wait_ready()
        asyncio.run(drive(server.port, min(2000, args.requests), args.concurrency))  # warm-up
        rate, latencies = asyncio.run(drive(server.port, args.requests, args.concurrency))
    finally:
        server.stop()
    p50, p99 = latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000
    print(
        f"modelfn serve --workers {args.workers}, max_batch_size {args.max_batch}, c={args.concurrency}: "
        f"{rate:9.0f} requests/s  p50 {p50:.1f} ms  p99 {p99:.1f} ms (budget >= 15,000 requests/s, p99 <= 100 ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
