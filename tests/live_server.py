"""A real uvicorn server on a loopback port, in a thread, for tests."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import uvicorn


def wait_until(condition: Callable[[], object], limit_s: float = 30, every_s: float = 0.1) -> bool:
    """Whether `condition()` came true within `limit_s`: for effects that happen after the answer
    (a log line, a shadow copy, a packet), which a loaded machine may take seconds to show."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every_s)
    return True


def wait_until_ready(base: str, process: subprocess.Popen[Any], limit_s: float = 60) -> None:
    """Until a `modelfn serve` subprocess answers its readiness probe; fails if it exits first."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            if httpx.get(f"{base}/v2/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the server at {base} did not become ready")
        time.sleep(0.1)


class LiveServer:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
