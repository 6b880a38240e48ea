"""Live latency on the server with a shadow version on and off: one `modelfn serve` (loopback)
serving breast-cancer twice, `cancer-off` (versions 1 and 2, all traffic to 1, no shadow) and
`cancer-on` (the same, and version 2, the same model, shadowing every request), under a
closed-loop client (bench/load.py's raw keep-alive client) at modest concurrency. Blocks
alternate off/on (ABAB...) so the shared machine's load falls on both alike; a pause after each
block lets pending shadow copies finish before the next one starts. Budget (issue 13): the
median latency with the shadow on within 1.05x of off. Never asserts.

    python bench/shadow_latency.py [--requests 2000] [--rounds 4] [--concurrency 8 | --rate 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import RawConnection, cancer_workload, closed_loop, free_port  # noqa: E402

MODEL = ROOT / "functions" / "breast-cancer" / "model.onnx"
TRAFFIC = {"cancer-off": "weights = { 1 = 100 }", "cancer-on": 'weights = { 1 = 100 }\nshadow = "2"'}


def functions_dir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="modelfn-shadow-latency-"))
    for name, traffic in TRAFFIC.items():
        folder = root / name
        folder.mkdir()
        shutil.copyfile(MODEL, folder / "model.onnx")
        (folder / "function.toml").write_text(
            f'name = "{name}"\n[model]\nsource = "model.onnx"\n'
            f'[model.versions.2]\nsource = "model.onnx"\n[traffic]\n{traffic}\n'
        )
    return root


def serve(functions: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "modelfn.cli", "--functions-dir", str(functions), "serve", *TRAFFIC]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "MODELFN_CACHE_DIR": str(functions / ".cache")}
    env.pop("MODELFN_API_KEY", None)
    process = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not become ready:\n{log.read_text()[-2000:]}")


def shadow_counts(port: int) -> dict[str, float]:
    """Shadow copies so far by outcome, `ran` or `dropped` (the server's Prometheus counter)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts = {"ran": 0.0, "dropped": 0.0}
    for line in text.splitlines():
        if line.startswith("modelfn_version_requests_total{") and 'role="shadow"' in line:
            outcome = "dropped" if 'status="dropped"' in line else "ran"
            counts[outcome] += float(line.rsplit(" ", 1)[1])
    return counts


async def open_loop(port: int, path: str, bodies: list[bytes], requests: int, rate: float) -> tuple[float, list[float]]:
    """Requests sent at random (Poisson) times at `rate` per second whatever the answers do, as
    independent users would; a latency counts from the planned send time. Connections are
    reused when free, opened when all are busy."""
    import random

    free: list[RawConnection] = []
    latencies: list[float] = []

    async def one(index: int, planned: float) -> None:
        connection = free.pop() if free else RawConnection("127.0.0.1", port, path, bodies)
        status, _ = await connection.send(index)
        latencies.append(time.perf_counter() - planned)
        free.append(connection)
        if status != 200:
            raise RuntimeError(f"status {status}")

    started = time.perf_counter()
    planned, tasks = started, []
    for index in range(requests):
        planned += random.expovariate(rate)
        delay = planned - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, planned)))
    await asyncio.gather(*tasks)
    for connection in free:
        await connection.close()
    return requests / (time.perf_counter() - started), sorted(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per block")
    parser.add_argument("--rounds", type=int, default=4, help="off/on pairs of blocks")
    parser.add_argument("--concurrency", type=int, default=8, help="closed loop: connections, one request each")
    parser.add_argument("--rate", type=float, help="open loop instead: requests per second at random times")
    args = parser.parse_args()
    functions = functions_dir()
    port = free_port()
    server = serve(functions, port, functions / "server.log")
    bodies = cancer_workload().bodies
    p50: dict[str, list[float]] = {name: [] for name in TRAFFIC}
    p99: dict[str, list[float]] = {name: [] for name in TRAFFIC}
    rates: dict[str, list[float]] = {name: [] for name in TRAFFIC}
    try:
        for name in TRAFFIC:  # warm both: connections, batchers, the shadow's session
            asyncio.run(closed_loop(port, f"/functions/{name}", bodies, 500, args.concurrency))
        time.sleep(1)
        before = shadow_counts(port)
        for _ in range(args.rounds):
            for name in TRAFFIC:
                path = f"/functions/{name}"
                if args.rate:
                    rate, latencies = asyncio.run(open_loop(port, path, bodies, args.requests, args.rate))
                else:
                    rate, latencies = asyncio.run(closed_loop(port, path, bodies, args.requests, args.concurrency))
                rates[name].append(rate)
                p50[name].append(latencies[len(latencies) // 2] * 1000)
                p99[name].append(latencies[int(len(latencies) * 0.99)] * 1000)
                time.sleep(0.5)  # pending shadow copies finish before the next block
        after = shadow_counts(port)
        copies = {k: after[k] - before[k] for k in after}
    finally:
        server.terminate()
        server.wait(20)
        shutil.rmtree(functions, ignore_errors=True)
    print(
        f"server shadow latency, breast-cancer, {args.rounds} x {args.requests} requests per mode, "
        + (f"open loop at {args.rate:g} req/s" if args.rate else f"closed loop, concurrency {args.concurrency}")
        + f", load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'':12} {'p50 ms (median, min)':>22} {'p99 ms (median, min)':>22} {'req/s median':>13}")
    for name in TRAFFIC:
        print(
            f"{name:12} {statistics.median(p50[name]):10.3f} {min(p50[name]):10.3f} "
            f"{statistics.median(p99[name]):10.3f} {min(p99[name]):10.3f} {statistics.median(rates[name]):13.0f}"
        )
    ratios50 = [on / off for off, on in zip(p50["cancer-off"], p50["cancer-on"], strict=True)]
    ratios99 = [on / off for off, on in zip(p99["cancer-off"], p99["cancer-on"], strict=True)]
    shown = " ".join(f"{r:.3f}" for r in ratios50)
    print(f"on/off p50 ratio per round: {shown}; median {statistics.median(ratios50):.3f}")
    shown = " ".join(f"{r:.3f}" for r in ratios99)
    print(f"on/off p99 ratio per round: {shown}; median {statistics.median(ratios99):.3f}")
    sent = args.rounds * args.requests
    print(f"shadow copies of {sent} requests to cancer-on: {copies['ran']:.0f} ran, {copies['dropped']:.0f} dropped")
    print("budget: median p50 ratio <= 1.05")


if __name__ == "__main__":
    main()
