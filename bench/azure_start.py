"""Azure Functions HTTP start: process start to the first response, for the direct adapter
(the shared service) and for AsgiMiddleware over the FastAPI app, next to a bare ONNX
Runtime script, medians of fresh processes run in alternating order. Prints, never asserts.

    python bench/azure_start.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BARE = """
import json, numpy as np, onnxruntime as ort
s = ort.InferenceSession("functions/breast-cancer/model.onnx", providers=["CPUExecutionProvider"])
x = np.asarray([json.load(open("events/azure/http.json"))["body"]["X"]], dtype=np.float32)
s.run(None, {"X": x})
"""

ADAPTER = """
import json, sys
from handlers.azure_functions import build_app
from handlers.local.azure import http_event, invoke, registered
app = build_app("breast-cancer", http_mode=sys.argv[1])
response, _ = invoke(registered(app, "http"), http_event(json.load(open("events/azure/http.json"))))
assert response.status_code == 200, response.get_body()
"""


def once(mode: str) -> float:
    command = [sys.executable, "-c", BARE] if mode == "bare" else [sys.executable, "-c", ADAPTER, mode]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    modes = ("bare", "direct", "asgi")
    for mode in modes:  # warm the file cache
        once(mode)
    timings: dict[str, list[float]] = {mode: [] for mode in modes}
    for run in range(args.runs):
        for mode in modes if run % 2 else reversed(modes):
            timings[mode].append(once(mode))
    bare = statistics.median(timings["bare"])
    for mode in modes:
        median = statistics.median(timings[mode])
        print(f"{mode:7} start to first response: {median:7.0f} ms   {median / bare:4.2f}x bare")


if __name__ == "__main__":
    main()
