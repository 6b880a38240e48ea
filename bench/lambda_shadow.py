"""What a shadow copy costs the live Lambda invocation: `handlers.aws_lambda.handler` on the HTTP
API (v2) event for breast-cancer with a shadow version (the same model), in one process, in
interleaved blocks so machine load hits every mode alike:

- shadow off: the shadow sampled out (`shadow_sample` 0), nothing sent;
- async invoke, moto: MODELFN_SHADOW_TARGET set, one `invoke(InvocationType="Event")` per
  request, answered 202 by moto's server (its Docker-less Lambda backend) in a process of its own;
- async invoke, bare 202: the same call answered by a loopback server that only says 202, so
  what remains is the client's own cost (encoding the copy, botocore, signing, one HTTP request);
- in-process: no target (a local run), the shadow runs after the answer in the same call.

The real Lambda API adds a network round trip within the region and its own queueing time on
top of the bare figure. Never asserts.

    python bench/lambda_shadow.py [--calls 2000] [--blocks 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.lambda_warm import per_call  # noqa: E402
from bench.load import free_port  # noqa: E402

TARGET = "arn:aws:lambda:us-east-1:123456789012:function:cancer-ab-shadow:shadow"


def function_folder(root: Path) -> Path:
    """breast-cancer with its model as version 1 and again as shadow version 2."""
    folder = root / "cancer-ab"
    folder.mkdir(parents=True)
    shutil.copyfile(ROOT / "functions" / "breast-cancer" / "model.onnx", folder / "model.onnx")
    (folder / "function.toml").write_text(
        'name = "cancer-ab"\n[model]\nsource = "model.onnx"\n'
        '[model.versions.2]\nsource = "model.onnx"\n[traffic]\nshadow = "2"\n'
    )
    return root


BARE_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Accepted(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Accepted).serve_forever()
"""


def wait_for(url: str) -> None:
    for _ in range(200):
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b""), timeout=1).read()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--blocks", type=int, default=10)
    args = parser.parse_args()
    moto_port, bare_port = free_port(), free_port()
    servers = [
        subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)]),
    ]
    moto, bare = f"http://127.0.0.1:{moto_port}", f"http://127.0.0.1:{bare_port}"
    for url in (moto, bare):
        wait_for(url)
    config = urllib.request.Request(
        f"{moto}/moto-api/config", json.dumps({"lambda": {"use_docker": False}}).encode(), method="POST"
    )
    urllib.request.urlopen(config).read()
    functions = function_folder(Path(tempfile.mkdtemp(prefix="modelfn-shadow-bench-")))
    os.environ.update(
        {
            "AWS_LAMBDA_FUNCTION_NAME": "modelfn-bench",
            "MODELFN_FUNCTION": "cancer-ab",
            "MODELFN_FUNCTIONS_DIR": str(functions),
            "MODELFN_SHADOW_TARGET": TARGET,
            "AWS_ENDPOINT_URL": moto,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "HOME": os.environ.get("HOME", "/tmp"),
        }
    )
    event = json.loads((ROOT / "events" / "aws" / "apigw-v2.json").read_text())
    event["rawPath"] = "/functions/cancer-ab"
    sink = open(os.devnull, "w")  # noqa: SIM115 - stands in for the log pipe for the whole run
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        from handlers import aws_lambda

        app = aws_lambda.current()
        versions = app.registry.traffic("cancer-ab")
        remote = app.service.shadow_sink

        def mode(sample: float, sink: Any, endpoint: str = moto) -> Any:
            def call(event: dict[str, Any], context: Any) -> Any:
                versions.sample, app.service.shadow_sink = sample, sink
                os.environ["AWS_ENDPOINT_URL"] = endpoint  # one cached client per endpoint
                answer = aws_lambda.handler(event, context)
                assert answer["statusCode"] == 200, answer
                return answer

            return call

        modes: dict[str, Any] = {
            "shadow off": mode(0.0, remote),
            "async invoke, moto": mode(1.0, remote),
            "async invoke, bare 202": mode(1.0, remote, bare),
            "shadow in-process": mode(1.0, None),
        }
        for call in modes.values():
            per_call(call, event, 200)  # warm: connections, templates
        timings: dict[str, list[float]] = {name: [] for name in modes}
        blocks: dict[str, list[float]] = {name: [] for name in modes}
        cpu: dict[str, list[float]] = {name: [] for name in modes}  # this process only: the servers are others
        block = max(1, args.calls // args.blocks)
        for _ in range(args.blocks):
            for name, call in modes.items():
                cpu_started = time.process_time()
                values = per_call(call, event, block)
                cpu[name].append((time.process_time() - cpu_started) / block)
                timings[name] += values
                blocks[name].append(statistics.median(values))
    for server in servers:
        server.terminate()
    off = statistics.median(timings["shadow off"])
    print(f"Lambda live invocation with a shadow version (breast-cancer twice), {block * args.blocks} calls each")
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}, invokes answered on loopback")
    print(f"{'':24} {'median us':>10} {'min block':>10} {'p90 us':>8} {'added us':>9} {'cpu us':>8}")
    for name, values in timings.items():
        median = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        print(
            f"{name:24} {median * 1e6:10.1f} {min(blocks[name]) * 1e6:10.1f} {p90 * 1e6:8.1f} "
            f"{(median - off) * 1e6:9.1f} {statistics.median(cpu[name]) * 1e6:8.1f}"
        )
    for name in ("async invoke, moto", "async invoke, bare 202"):
        added = [b - a for a, b in zip(blocks["shadow off"], blocks[name], strict=True)]
        median, least = statistics.median(added) * 1e6, min(added) * 1e6
        print(f"{name}: added per call, block pairs: median {median:.1f} us, min {least:.1f} us")
    print("cpu us: this process's CPU per call (the live function's own work; the rest of the wall time is waiting)")


if __name__ == "__main__":
    main()
