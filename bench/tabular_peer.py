"""breast-cancer at concurrency 64: `modelfn serve` against its peer, a 20-line FastAPI
`async def` endpoint that calls `session.run` directly (what a user would write by hand), each
in its own process on loopback, driven by the same raw keep-alive client in alternating rounds
(ABAB...). Prints per round and the medians: requests/s, p50 and p99, and modelfn's ratio to the
peer (the budget: at least the peer's throughput and no worse p99). Asserts nothing.

    python bench/tabular_peer.py [--requests 6000] [--concurrency 64] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path

from load import PeerProcess, ServerProcess, closed_loop

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "functions" / "breast-cancer" / "model.onnx"
PATH = "/functions/breast-cancer"
PEER = """
import json
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import Response

options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession({model!r}, sess_options=options)
app = FastAPI()


@app.post("{path}")
async def predict(request: Request) -> Response:
    rows = np.asarray(json.loads(await request.body())["X"], dtype=np.float32)
    label, probabilities = session.run(None, {{"X": rows.reshape(-1, 30)}})
    body = {{"label": label.tolist(), "probabilities": probabilities.tolist()}}
    return Response(json.dumps(body), media_type="application/json")


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    return {{"ready": True}}
"""


def bodies() -> list[bytes]:
    from sklearn.datasets import load_breast_cancer

    return [json.dumps({"X": row.tolist()}).encode() for row in load_breast_cancer().data[:256]]


def line(rate: float, p50: float, p99: float) -> str:
    return f"{rate:8.0f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    payloads = bodies()
    fastapi = PeerProcess("fastapi peer", PEER.format(model=str(MODEL), path=PATH))
    servers = {"modelfn serve": ServerProcess("breast-cancer"), "fastapi peer": fastapi}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in servers}
    try:
        for server in servers.values():
            server.wait_ready()
            asyncio.run(closed_loop(server.port, PATH, payloads, 500, args.concurrency))  # warm-up
        print(f"breast-cancer, {args.requests} requests at concurrency {args.concurrency}, {args.rounds} rounds (ABAB)")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        for round_ in range(args.rounds):
            for name, server in servers.items():
                rate, latencies = asyncio.run(closed_loop(server.port, PATH, payloads, args.requests, args.concurrency))
                figures = (rate, percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000)
                results[name].append(figures)
                print(f"  round {round_ + 1} {name:14} {line(*figures)}")
    finally:
        for server in servers.values():
            server.stop()
    medians = {name: [statistics.median(f[i] for f in rows) for i in range(3)] for name, rows in results.items()}
    for name, (rate, p50, p99) in medians.items():
        print(f"median {name:14} {line(rate, p50, p99)}")
    ours, peer = medians["modelfn serve"], medians["fastapi peer"]
    ratio, tail = ours[0] / peer[0], ours[2] / peer[2]
    print(f"modelfn / peer: throughput {ratio:.2f}x, p99 {tail:.2f}x (budget: throughput >= 1.00x, p99 <= 1.00x)")


if __name__ == "__main__":
    main()
