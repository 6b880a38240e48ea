"""Lambda cold start: process start to the first HTTP API (v2) response for breast-cancer,
through the real runtime loop (`python -m awslambdaric HANDLER` against a loopback Runtime
API), for the bare script (`bench/bare_lambda.py`), `handlers.aws_lambda.handler` and the
Mangum path `handlers.aws_lambda.asgi_handler`, interleaved run by run so machine load
hits all alike. Prints medians, ratios to the bare script (budget: handler <= 1.15x) and
peak memory (ru_maxrss of the process right after its first response). Never asserts.

Every contender runs from a staged copy of the code with its bytecode precompiled
(unchecked-hash pycs) and the function's spec beside it as JSON, as the CDK app ships it
(`cdk/modelfn_cdk/assets.py`): /var/task is read-only, and without pycs each cold start would
compile the toolkit from source, a cost no deployment pays. (With PYTHONDONTWRITEBYTECODE
set, as on some CI machines, running from the checkout would measure exactly that.)

    python bench/lambda_cold_start.py [--runs 9]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.lambda_runtime import RuntimeApi, lambda_environment, start_runtime  # noqa: E402

from modelfn.spec import write_compiled_spec  # noqa: E402

# what the handler would pay on top of its own imports, had it imported these eagerly
IMPORT_COSTS = {
    "Powertools Logger + Metrics": "aws_lambda_powertools.logging, aws_lambda_powertools.metrics",
    "Powertools event_handler (APIGatewayHttpResolver)": "aws_lambda_powertools.event_handler",
    "Powertools batch (SQS path only)": "aws_lambda_powertools.utilities.batch",
    "boto3 (S3/SQS/SNS paths only)": "boto3",
    "mangum + the ASGI app (asgi_handler only)": "mangum, handlers.cloud_run",
}

CONTENDERS = {
    "bare script": ("bench.bare_lambda.handler", {}),
    "modelfn handler": ("handlers.aws_lambda.handler", {"MODELFN_FUNCTION": "breast-cancer"}),
    "modelfn asgi_handler (Mangum + the ASGI app)": (
        "handlers.aws_lambda.asgi_handler",
        {"MODELFN_FUNCTION": "breast-cancer"},
    ),
}


def stage(into: Path) -> Path:
    """What the zip asset holds (`modelfn/`, `handlers/`, the function with its spec compiled to
    JSON), plus the bare script, with bytecode compiled the way `assets.compile_code` does it."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.toml.json")
    for package in ("modelfn", "handlers"):
        shutil.copytree(ROOT / package, into / package, ignore=ignore)
    (into / "bench").mkdir()
    (into / "bench" / "__init__.py").write_text("")
    shutil.copyfile(ROOT / "bench" / "bare_lambda.py", into / "bench" / "bare_lambda.py")
    shutil.copytree(ROOT / "functions" / "breast-cancer", into / "functions" / "breast-cancer", ignore=ignore)
    write_compiled_spec(into / "functions" / "breast-cancer")
    compile_all = [sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash"]
    subprocess.run([*compile_all, "modelfn", "handlers", "bench"], cwd=into, check=True, capture_output=True)
    return into


def cold_start(handler: str, extra: dict[str, str], event: dict[str, object], root: Path) -> tuple[float, float, str]:
    """(seconds to first response, peak RSS in MB, response body) for one fresh process run in `root`."""
    with RuntimeApi() as api:
        request_id = api.submit(event)
        env = lambda_environment(api, "modelfn-bench", MODELFN_FUNCTIONS_DIR=str(root / "functions"), **extra)
        started = time.perf_counter()
        process = start_runtime(handler, env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            outcome = api.outcome(request_id, timeout_s=120)
        except (TimeoutError, RuntimeError):
            process.kill()
            sys.stderr.write(process.stderr.read().decode()[-2000:] if process.stderr else "")
            raise
        elapsed = outcome.received - started
        process.kill()
        _, _, usage = os.wait4(process.pid, 0)
        if process.stderr:
            process.stderr.close()
    body = outcome.json().get("body", "") if outcome.kind == "response" else outcome.body.decode()
    return elapsed, usage.ru_maxrss / 1024, body


def import_cost(modules: str, runs: int, root: Path) -> float:
    """Milliseconds `import modules` adds after ONNX Runtime and the handler: min of `runs` fresh processes."""
    code = (
        "import time, onnxruntime, handlers.aws_lambda; started = time.perf_counter(); "
        f"import {modules}; print(time.perf_counter() - started)"
    )
    timings = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
        timings.append(float(done.stdout))
    return min(timings) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--no-asgi", action="store_true", help="skip the Mangum contender")
    parser.add_argument("--no-imports", action="store_true", help="skip the import-cost table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelfn-cold-") as staging:
        measure(args, stage(Path(staging)))


def measure(args: argparse.Namespace, root: Path) -> None:
    event = json.loads((ROOT / "events" / "aws" / "apigw-v2.json").read_text())
    contenders = {k: v for k, v in CONTENDERS.items() if not (args.no_asgi and "asgi" in v[0])}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    memory: dict[str, list[float]] = {name: [] for name in contenders}
    bodies: dict[str, str] = {}
    for handler, extra in contenders.values():  # one unmeasured run each: file caches warm
        cold_start(handler, extra, event, root)
    for _ in range(args.runs):
        for name, (handler, extra) in contenders.items():
            seconds, rss, body = cold_start(handler, extra, event, root)
            times[name].append(seconds)
            memory[name].append(rss)
            bodies[name] = body
    bare, bare_min = statistics.median(times["bare script"]), min(times["bare script"])
    print(f"Lambda cold start, process start -> first HTTP API v2 response (breast-cancer), {args.runs} runs each")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'':42} {'median ms':>10} {'ratio':>6} {'min ms':>8} {'ratio':>6} {'peak RSS MB':>12}")
    for name in contenders:
        median, fastest = statistics.median(times[name]), min(times[name])
        print(
            f"{name:42} {median * 1000:10.0f} {median / bare:6.2f} {fastest * 1000:8.0f} {fastest / bare_min:6.2f}"
            f" {statistics.median(memory[name]):12.0f}"
        )
    print("budget: modelfn handler <= 1.15x the bare script")
    same = {json.loads(b)["label"] for b in bodies.values() if b.startswith("{")}
    print(f"responses agree on the label: {len(same) == 1} ({sorted(same)})")
    if not args.no_imports:
        print(f"\nimport cost on top of onnxruntime + the handler (min of {args.runs} processes):")
        for name, modules in IMPORT_COSTS.items():
            print(f"  {name:50} {import_cost(modules, args.runs, root):6.0f} ms")


if __name__ == "__main__":
    main()
