"""The local server's start time: process start to the first answer from breast-cancer,
median of several runs, next to a bare `import onnxruntime; load; run` process measured in
the same run. Prints figures, asserts nothing.

    python bench/server_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "functions" / "breast-cancer" / "model.onnx"
BARE = f"""
import numpy as np, onnxruntime as ort
s = ort.InferenceSession({str(MODEL)!r}, providers=["CPUExecutionProvider"])
s.run(None, {{"X": np.zeros((1, 30), np.float32)}})
"""
ROW = [17.99, 10.38, 122.8, 1001, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871] * 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bare() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE], check=True)
    return time.perf_counter() - started


def server() -> float:
    port = _free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelfn.cli", "serve", "breast-cancer", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env={**os.environ},
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                response = httpx.post(f"http://127.0.0.1:{port}/functions/breast-cancer", json={"X": ROW}, timeout=5)
                if response.status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                time.sleep(0.01)
            if process.poll() is not None:
                raise RuntimeError("server exited")
    finally:
        process.terminate()
        process.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    bare_s = statistics.median(bare() for _ in range(args.runs))
    server_s = statistics.median(server() for _ in range(args.runs))
    print(f"bare import+load+run process : {bare_s * 1000:7.0f} ms")
    print(f"modelfn serve to first answer: {server_s * 1000:7.0f} ms   ({server_s / bare_s:.1f}x the bare process)")


if __name__ == "__main__":
    main()
