"""Fixtures shared by the AWS test modules (registered in tests/conftest.py): moto's server,
the Lambda handler pointed at it, the handler's captured log lines, the breast-cancer function."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from modelfn.registry import Registry
from support.aws import capture_telemetry, moto_server, use_endpoint


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> Any:
    """The handler serving breast-cancer with every AWS call going to moto."""
    from handlers import aws_lambda
    from handlers.aws import app

    use_endpoint(monkeypatch, endpoint)
    monkeypatch.setenv("MODELFN_FUNCTION", "breast-cancer")
    app.reset()
    return aws_lambda


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[dict[str, Any]]]:
    return capture_telemetry(monkeypatch)


@pytest.fixture(scope="module")
def cancer() -> Any:
    return Registry.from_dir(names=["breast-cancer"]).load("breast-cancer")
