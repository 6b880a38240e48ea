"""What drift counting and the prediction cache cost on Lambda's warm path: the real
`handlers.aws_lambda.handler` on HTTP API (v2) events for breast-cancer, with drift and the
cache off and on, in alternating blocks (A B A B ...) so machine load hits every variant
alike. Prints per-call medians and minimums of the block medians, and the difference to
"off". Budget: drift <= 5 us per request. Never asserts.

    python bench/drift_overhead.py [--calls 2000] [--blocks 12]

Variants (one LambdaApp each, same model file, same events):
- off: no profile, no cache;
- off-again: the same as off, another session of the same model: the A/A noise floor;
- drift: profile.json from events/samples/breast-cancer.jsonl, window 1000 requests;
- cache-miss: [cache] on, in-process, every event new to it (key, lookup, store);
- cache-hit: [cache] on, one event repeated (key, lookup, no model run).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lambda_warm import Context  # noqa: E402 - the same stand-in context as the warm bench


def event(row: list[float]) -> dict[str, Any]:
    return {
        "version": "2.0",
        "rawPath": "/",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": "POST"}, "stage": "$default"},
        "body": json.dumps({"X": row}),
        "isBase64Encoded": False,
    }


def function_folder(root: Path, name: str, extra: str, profile: Path | None) -> Path:
    folder = root / name / "breast-cancer"
    folder.mkdir(parents=True)
    source = ROOT / "functions" / "breast-cancer"
    shutil.copy(source / "model.onnx", folder)
    (folder / "function.toml").write_text((source / "function.toml").read_text() + extra)
    if profile is not None:
        shutil.copy(profile, folder / "profile.json")
    return folder.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--blocks", type=int, default=12)
    args = parser.parse_args()

    import numpy as np

    from handlers import aws_lambda
    from handlers.aws import app as lambda_app
    from handlers.aws.telemetry import telemetry
    from modelfn.deploy.profile import build
    from modelfn.registry import Registry

    telemetry._stream = io.StringIO()  # EMF and log lines written as on Lambda, to a sink
    root = Path(tempfile.mkdtemp(prefix="modelfn-bench-"))
    reference = Registry.from_dir(ROOT / "functions", ["breast-cancer"]).load("breast-cancer")
    profile_path = root / "profile.json"
    build(reference, ROOT / "events" / "samples" / "breast-cancer.jsonl").save(profile_path)

    cache = "\n[cache]\nenabled = true\nsize = 1024\n"
    folders = {
        "off": function_folder(root, "off", "\n[drift]\nenabled = false\n", None),
        "off-again": function_folder(root, "off-again", "\n[drift]\nenabled = false\n", None),
        "drift": function_folder(root, "drift", "\n[drift]\nwindow_requests = 1000\nmin_rows = 500\n", profile_path),
        "cache-miss": function_folder(root, "cache-miss", cache, None),
        "cache-hit": function_folder(root, "cache-hit", cache, None),
    }
    rows = [json.loads(line)["X"] for line in (ROOT / "events/samples/breast-cancer.jsonl").read_text().splitlines()]
    # 4096 distinct requests: more than the cache holds, so cache-miss never hits
    distinct = [event([rows[i % len(rows)][0] + i * 0.01, *rows[i % len(rows)][1:]]) for i in range(4096)]
    events = {name: distinct for name in folders}
    events["cache-hit"] = [distinct[0]]

    apps = {}
    os.environ["MODELFN_FUNCTION"] = "breast-cancer"
    for name, folder in folders.items():
        os.environ["MODELFN_FUNCTIONS_DIR"] = str(folder)
        lambda_app.reset()
        app = lambda_app.current()
        app.load()
        apps[name] = app

    served = dict.fromkeys(folders, 0)  # each variant goes on through its events from block to block

    def block(name: str) -> float:
        lambda_app._current = apps[name]
        batch, start = events[name], served[name]
        served[name] += args.calls
        timings = []
        for i in range(start, start + args.calls):
            item = batch[i % len(batch)]
            started = time.perf_counter()
            aws_lambda.handler(item, Context)
            timings.append(time.perf_counter() - started)
        return statistics.median(timings)

    for name in folders:  # warm every variant (and fill the drift window once)
        block(name)
    medians: dict[str, list[float]] = {name: [] for name in folders}
    for _ in range(args.blocks):
        for name in folders:
            medians[name].append(block(name))
    with contextlib.suppress(Exception):
        shutil.rmtree(root)

    print(f"Lambda warm path, breast-cancer, {args.blocks} blocks x {args.calls} calls per variant, ABAB")
    print(f"{'variant':12} {'median us':>10} {'min us':>8} {'vs off (median)':>16} {'vs off (min)':>13}")
    base_median, base_min = statistics.median(medians["off"]), min(medians["off"])
    for name, values in medians.items():
        med, low = statistics.median(values), min(values)
        print(
            f"{name:12} {med * 1e6:10.1f} {low * 1e6:8.1f} {(med - base_median) * 1e6:+16.2f} "
            f"{(low - base_min) * 1e6:+13.2f}"
        )

    # the counting alone, without the handler around it: one request's feeds and outputs
    watched = apps["drift"].service.monitor.watched(apps["drift"].function())
    assert watched is not None and watched.drift is not None
    feeds = {"X": np.asarray([rows[0]], dtype=np.float32)}
    outputs = apps["drift"].function().run(feeds)
    samples = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(20000):
            watched.observe(feeds, outputs)
        samples.append((time.perf_counter() - started) / 20000)
    print(f"drift observe() alone: median {statistics.median(samples) * 1e6:.2f} us, min {min(samples) * 1e6:.2f} us")


if __name__ == "__main__":
    main()
