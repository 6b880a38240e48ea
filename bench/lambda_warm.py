"""Lambda warm invocations: time per call of `handlers.aws_lambda.handler` on the HTTP API
(v2) event for breast-cancer against the bare script's handler, in one process, in
alternating blocks so machine load hits both alike. The modelfn handler does everything it
does on Lambda (routing, validation, JSON log and EMF metric lines written to a pipe-like
sink), the bare one parses, runs and returns. Budget: <= 1.3x. Never asserts.

Where code and data happen to lie in memory moves a process's per-call times by up to 1 us,
and differently for each contender, so the measurement runs in `--processes` fresh processes
(3 by default) and prints, per contender, the median over them of each process's median and
their range, with the ratio to the bare script taken process by process.

    python bench/lambda_warm.py [--calls 3000] [--processes 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Context:
    function_name = "modelfn-bench"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:modelfn-bench"
    aws_request_id = "00000000-0000-0000-0000-000000000000"


def per_call(handler: Any, event: dict[str, Any], calls: int) -> list[float]:
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        handler(event, Context)
        timings.append(time.perf_counter() - started)
    return timings


def metrics_off(handler: Any) -> Any:
    """The handler with POWERTOOLS_METRICS_DISABLED: no EMF document per invocation."""
    from handlers.aws.telemetry import telemetry

    def call(event: dict[str, Any], context: Any) -> Any:
        telemetry.metrics_enabled = False
        try:
            return handler(event, context)
        finally:
            telemetry.metrics_enabled = True

    return call


def measure(calls: int, blocks: int) -> tuple[dict[str, list[float]], bool]:
    """Each contender's per-call times in this process, and whether both handlers answer alike."""
    os.environ.update(
        {
            "AWS_LAMBDA_FUNCTION_NAME": "modelfn-bench",
            "MODELFN_FUNCTION": "breast-cancer",
            "MODELFN_FUNCTIONS_DIR": str(ROOT / "functions"),
            "HOME": os.environ.get("HOME", "/tmp"),
        }
    )
    event = json.loads((ROOT / "events" / "aws" / "apigw-v2.json").read_text())
    sink = open(os.devnull, "w")  # noqa: SIM115 - stands in for the log pipe for the whole run
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        from bench import bare_lambda
        from handlers import aws_lambda
        from modelfn.http import HttpRequest

        bodies = {json.loads(h(event, Context)["body"])["label"] for h in (bare_lambda.handler, aws_lambda.handler)}
        app = aws_lambda.current()
        fn, body = app.function(), event["body"].encode()
        request = HttpRequest("POST", event["rawPath"], event["headers"], body)
        # where the time goes: the core's predict, the core's HTTP service around it, the adapter around that
        stages: dict[str, Any] = {
            "bare script": lambda e, c: bare_lambda.handler(e, c),
            "  core: ModelFunction.predict": lambda e, c: fn.predict(body, "application/json"),
            "  core: Service.handle": lambda e, c: app.service.handle(request),
            "modelfn handler": aws_lambda.handler,
            "modelfn handler, EMF metrics off": metrics_off(aws_lambda.handler),
        }
        timings: dict[str, list[float]] = {name: [] for name in stages}
        block = max(1, calls // blocks)
        for _ in range(blocks):
            for name, stage in stages.items():
                timings[name] += per_call(stage, event, block)
    return timings, len(bodies) == 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--one-process", action="store_true", help=argparse.SUPPRESS)  # a child's part: JSON out
    args = parser.parse_args()
    if args.one_process:
        timings, agree = measure(args.calls, args.blocks)
        figures = {name: [statistics.median(v), statistics.quantiles(v, n=10)[-1]] for name, v in timings.items()}
        print(json.dumps({"figures": figures, "agree": agree}))
        return
    runs = []
    for _ in range(max(1, args.processes)):
        child = [sys.executable, __file__, "--one-process", "--calls", str(args.calls), "--blocks", str(args.blocks)]
        runs.append(json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout))
    calls = max(1, args.calls // args.blocks) * args.blocks
    print(f"Lambda warm invocation, HTTP API v2 event (breast-cancer), {calls} calls each in {len(runs)} processes")
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'':32} {'median us':>10} {'range over processes':>22} {'p90 us':>8} {'ratio':>6} {'ratio range':>12}")
    for name in runs[0]["figures"]:
        medians = [run["figures"][name][0] * 1e6 for run in runs]
        p90 = statistics.median(run["figures"][name][1] * 1e6 for run in runs)
        ratios = [run["figures"][name][0] / run["figures"]["bare script"][0] for run in runs]
        spread = f"{min(medians):.1f}-{max(medians):.1f}"
        ratio_spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(
            f"{name:32} {statistics.median(medians):10.1f} {spread:>22} {p90:8.1f} "
            f"{statistics.median(ratios):6.2f} {ratio_spread:>12}"
        )
    print("budget: modelfn handler <= 1.30x the bare script")
    print(f"responses agree on the label: {all(run['agree'] for run in runs)}")


if __name__ == "__main__":
    main()
