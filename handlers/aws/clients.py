"""boto3 clients, created on first use: only the S3, SQS and SNS paths pay for importing
boto3 (about 0.2 s), and a SnapStart restore drops them so no connection or credential
is shared between restored copies. boto3 honours AWS_ENDPOINT_URL(_S3/_SQS...) itself."""

from __future__ import annotations

import os
from typing import Any

_clients: dict[tuple[str, str | None, str | None], Any] = {}


def client(service: str, fail_fast: bool = False) -> Any:
    """`fail_fast`: one attempt and short timeouts, for calls a live answer must never wait on
    (the shadow copy's invoke) rather than boto3's retries with backoff."""
    # keyed by endpoint too: a process pointed at another endpoint (a local S3, a test) gets a new client
    key = (service, os.environ.get("AWS_ENDPOINT_URL"), os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}"))
    if fail_fast:
        key = (f"{service}+fail-fast", *key[1:])
    if key not in _clients:
        import boto3

        config = None
        if fail_fast:
            from botocore.config import Config

            config = Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=2)
        _clients[key] = boto3.client(service, config=config)
    return _clients[key]


def reset() -> None:
    """Forget every client (after a SnapStart restore, or when the endpoint changes)."""
    _clients.clear()
