"""boto3 clients, created on first use: only the S3, SQS and SNS paths pay for importing
boto3 (about 0.2 s), and a SnapStart restore drops them so no connection or credential
is shared between restored copies. boto3 honours AWS_ENDPOINT_URL(_S3/_SQS...) itself."""

from __future__ import annotations

import os
from typing import Any

_clients: dict[tuple[str, str | None, str | None], Any] = {}


def client(service: str) -> Any:
    # keyed by endpoint too: a process pointed at another endpoint (a local S3, a test) gets a new client
    key = (service, os.environ.get("AWS_ENDPOINT_URL"), os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}"))
    if key not in _clients:
        import boto3

        _clients[key] = boto3.client(service)
    return _clients[key]


def reset() -> None:
    """Forget every client (after a SnapStart restore, or when the endpoint changes)."""
    _clients.clear()
