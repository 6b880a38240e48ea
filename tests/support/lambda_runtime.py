"""A loopback Lambda Runtime API, enough for the real runtime interface client
(`python -m awslambdaric module.handler`) to run its loop: events are queued here, the
client long-polls `/next`, and its responses and error reports are collected per request.
SnapStart's `/restore/next` is answered too, so the snapshot hooks run as on Lambda."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PREFIX = "/2018-06-01/runtime"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    """What the runtime posted back for one invocation (or for init)."""

    kind: str  # "response" or "error"
    body: bytes
    headers: dict[str, str]
    received: float = field(default_factory=time.perf_counter)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Invocation:
    request_id: str
    body: bytes
    deadline_ms: int
    trace: str


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a killed runtime drops its keep-alive connection: expected, not worth a traceback
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class RuntimeApi:
    """Serves the Runtime API on 127.0.0.1 (a free port) until `stop`."""

    function_arn = "arn:aws:lambda:us-east-1:123456789012:function:modelfn-test"

    def __init__(self) -> None:
        self.pending: queue.Queue[_Invocation | None] = queue.Queue()
        self.outcomes: dict[str, Outcome] = {}
        self.arrived = threading.Condition()
        self.init_error: Outcome | None = None
        self.restores = 0
        self.server = _Server(("127.0.0.1", 0), self._handler_class())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> RuntimeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.pending.put(None)
        self.server.shutdown()
        self.server.server_close()

    def submit(self, event: Any, timeout_s: float = 60, sampled: bool = False) -> str:
        """Queue one invocation; `sampled` asks X-Ray to record it, as an active-tracing function would."""
        request_id = str(uuid.uuid4())
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        trace = f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]}"
        trace += ";Sampled=1" if sampled else ";Sampled=0"
        self.pending.put(_Invocation(request_id, body, int((time.time() + timeout_s) * 1000), trace))
        return request_id

    def outcome(self, request_id: str, timeout_s: float = 60) -> Outcome:
        deadline = time.monotonic() + timeout_s
        with self.arrived:
            while request_id not in self.outcomes:
                if self.init_error is not None:
                    raise RuntimeError(f"the function failed to initialise: {self.init_error.body.decode()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no response for invocation {request_id} within {timeout_s} s")
                self.arrived.wait(min(left, 0.5))
            return self.outcomes[request_id]

    def invoke(self, event: Any, timeout_s: float = 60) -> Outcome:
        return self.outcome(self.submit(event, timeout_s), timeout_s)

    def _record(self, request_id: str | None, outcome: Outcome) -> None:
        with self.arrived:
            if request_id is None:
                self.init_error = outcome
            else:
                self.outcomes[request_id] = outcome
            self.arrived.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == f"{PREFIX}/invocation/next":
                    invocation = api.pending.get()
                    if invocation is None:  # shutting down: leave the client waiting on a closed socket
                        api.pending.put(None)
                        self.close_connection = True
                        return
                    self._reply(
                        200,
                        invocation.body,
                        {
                            # without this content type the native client crashes
                            "Content-Type": "application/json",
                            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                            "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
                            "Lambda-Runtime-Invoked-Function-Arn": api.function_arn,
                            "Lambda-Runtime-Trace-Id": invocation.trace,
                        },
                    )
                elif self.path == f"{PREFIX}/restore/next":
                    api.restores += 1
                    self._reply(200)
                else:
                    self._reply(404, b'{"errorMessage": "unknown path"}')

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                parts = self.path.removeprefix(PREFIX).strip("/").split("/")
                if parts[0] == "invocation" and len(parts) == 3 and parts[2] in ("response", "error"):
                    api._record(parts[1], Outcome(parts[2], body, headers))
                    self._reply(202, b'{"status": "OK"}')
                elif parts in (["init", "error"], ["restore", "error"]):
                    api._record(None, Outcome("error", body, headers))
                    self._reply(202, b'{"status": "OK"}')
                else:
                    self._reply(404, b'{"errorMessage": "unknown path"}')

        return Handler


def lambda_environment(api: RuntimeApi, function_name: str = "modelfn-test", **extra: str) -> dict[str, str]:
    """The environment Lambda gives a Python function, pointed at the loopback Runtime API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFN_", "AWS_LAMBDA_", "_X_AMZN"))}
    env.update(
        {
            "AWS_LAMBDA_RUNTIME_API": api.address,
            "AWS_LAMBDA_FUNCTION_NAME": function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "2024/11/26/[$LATEST]0123456789abcdef",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": env.get("AWS_REGION", "us-east-1"),
            "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", "us-east-1"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def start_runtime(handler: str, env: dict[str, str], cwd: Path = ROOT, **popen: Any) -> subprocess.Popen[bytes]:
    """`python -m awslambdaric HANDLER`: the real runtime loop, as Lambda's Python runtime runs it."""
    return subprocess.Popen([sys.executable, "-m", "awslambdaric", handler], cwd=cwd, env=env, **popen)
