"""Lambda warm invocations: time per call of `handlers.aws_lambda.handler` on the HTTP API
(v2) event for breast-cancer against the bare script's handler, in one process, in
alternating blocks so machine load hits both alike. The modelfn handler does everything it
does on Lambda (routing, validation, JSON log and EMF metric lines written to a pipe-like
sink), the bare one parses, runs and returns. Budget: <= 1.3x. Never asserts.

    python bench/lambda_warm.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--blocks", type=int, default=10)
    args = parser.parse_args()
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
        block = max(1, args.calls // args.blocks)
        for _ in range(args.blocks):
            for name, stage in stages.items():
                timings[name] += per_call(stage, event, block)
    bare = statistics.median(timings["bare script"])
    print(f"Lambda warm invocation, HTTP API v2 event (breast-cancer), {block * args.blocks} calls each")
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'':32} {'median us':>10} {'p90 us':>8} {'ratio':>6}")
    for name, values in timings.items():
        median = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"{name:32} {median * 1e6:10.1f} {p90 * 1e6:8.1f} {median / bare:6.2f}")
    print("budget: modelfn handler <= 1.30x the bare script")
    print(f"responses agree on the label: {len(bodies) == 1}")


if __name__ == "__main__":
    main()
