"""moto's S3/SQS/SNS server on loopback, and the environment that points boto3 at it.
Real HTTP: boto3 signs and sends requests, moto's server answers them."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest


@contextmanager
def moto_server() -> Iterator[str]:
    """`ThreadedMotoServer` on 127.0.0.1 and a free port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def use_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Fake credentials and every AWS client (ours included) sent to `endpoint`."""
    from handlers.aws import clients

    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MODELFN_LOCAL_S3", raising=False)
    clients.reset()


def unique(name: str) -> str:
    """A bucket or queue name no other test uses on the shared server."""
    return f"{name}-{uuid.uuid4().hex[:10]}"


def boto(service: str, endpoint: str | None = None) -> Any:
    """A test's own client (the adapter makes its own), with fake credentials."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def capture_telemetry(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[dict[str, Any]]]:
    """Every JSON line the Lambda adapter writes (log lines and EMF documents) from now on."""
    from handlers.aws.telemetry import telemetry

    sink = io.StringIO()
    monkeypatch.setattr(telemetry, "_stream", sink)
    monkeypatch.setattr(telemetry, "cold_start", True)
    return lambda: [json.loads(line) for line in sink.getvalue().splitlines()]
