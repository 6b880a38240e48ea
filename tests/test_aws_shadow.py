"""The Lambda shadow as an invocation of its own: with MODELFN_SHADOW_TARGET set, the live
invocation sends one asynchronous invoke (boto3, over HTTP, to moto's server) and runs no
shadow; the message it sent, given to the handler, runs the shadow and writes its metrics.

moto's server answers the invoke with its Docker-less Lambda backend (the shadow function
itself cannot run inside moto here), and its request recorder shows what arrived."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
from support.aws import capture_telemetry, moto_server, use_endpoint
from support.providers import lambda_http_event
from test_traffic import FACTORS, ROW, versioned_function

from handlers.local.aws import LocalContext
from modelfn.shadow_copy import MARKER, ShadowCopy, ShadowInput, is_shadow_copy

TARGET = "arn:aws:lambda:us-east-1:123456789012:function:ab-shadow:shadow"

pytestmark = pytest.mark.slow  # moto's server


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("functions")
    versioned_function(root, "ab", 'weights = { 1 = 90, 2 = 10 }\nshadow = "3"')
    return root


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def recorded(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], list[Any]]]:
    """moto's Docker-less Lambda answering invokes, and the requests its recorder saw since."""
    from moto.moto_api import recorder

    monkeypatch.setattr(recorder, "_location", str(tmp_path / "recording"))
    httpx.post(f"{endpoint}/moto-api/config", json={"lambda": {"use_docker": False}}).raise_for_status()
    httpx.post(f"{endpoint}/moto-api/recorder/reset-recording").raise_for_status()
    httpx.post(f"{endpoint}/moto-api/recorder/start-recording").raise_for_status()

    def requests() -> list[Any]:
        text = httpx.get(f"{endpoint}/moto-api/recorder/download-recording").text
        return [json.loads(line) for line in text.splitlines() if "/invocations" in line]

    yield requests
    httpx.post(f"{endpoint}/moto-api/recorder/stop-recording")
    httpx.post(f"{endpoint}/moto-api/config", json={"lambda": {"use_docker": True}})


@pytest.fixture
def live(root: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[dict[str, Any]]]:
    """The live function `ab` (v1/v2 by weight, shadow v3) with its shadow target set."""
    from handlers.aws import app

    use_endpoint(monkeypatch, endpoint)
    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(root))
    monkeypatch.setenv("MODELFN_FUNCTION", "ab")
    monkeypatch.setenv("MODELFN_SHADOW_TARGET", TARGET)
    app.reset()
    return capture_telemetry(monkeypatch)


def call(body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    from handlers import aws_lambda

    event = lambda_http_event("POST", "/functions/ab", json.dumps(body).encode(), headers)
    return aws_lambda.handler(event, LocalContext("ab"))  # type: ignore[no-any-return]


def invocation_metrics(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The invocation's own EMF document (the one carrying `Invocations`)."""
    return next(line for line in lines if "Invocations" in line)


def test_the_live_invocation_sends_one_async_invoke_and_runs_no_shadow(
    live: Callable[[], list[dict[str, Any]]], recorded: Callable[[], list[Any]]
) -> None:
    response = call({"x": ROW}, {"x-modelfn-key": "user-7"})
    answer = json.loads(response["body"])
    version = response["headers"]["x-modelfn-version"]
    assert response["statusCode"] == 200 and np.allclose(answer["y"], np.multiply(ROW, FACTORS[version]))

    lines = live()
    assert not any("ShadowRequests" in line for line in lines)  # the shadow did not run here
    metrics = invocation_metrics(lines)
    assert metrics["ShadowCopiesSent"] == 1 and metrics["ShadowSendLatency"] > 0

    (invoke,) = recorded()
    assert invoke["method"] == "POST"
    assert f"/functions/{TARGET}/invocations" in unquote(invoke["url"])
    assert invoke["headers"]["X-Amz-Invocation-Type"] == "Event"
    payload = json.loads(base64.b64decode(invoke["body"]) if invoke["body_encoded"] else invoke["body"])
    assert is_shadow_copy(payload)
    assert (payload["function"], payload["version"], payload["live_version"]) == ("ab", "3", version)
    assert json.loads(payload["input"]["text"]) == {"x": ROW}
    copy = ShadowCopy.from_message(payload)
    assert np.array_equal(copy.live["y"], np.asarray(answer["y"], dtype=np.float32))


def test_the_copy_given_to_the_handler_runs_the_shadow_and_answers_no_one(
    live: Callable[[], list[dict[str, Any]]], recorded: Callable[[], list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from handlers import aws_lambda
    from handlers.aws import app

    call({"x": ROW})
    (invoke,) = recorded()
    payload = json.loads(base64.b64decode(invoke["body"]) if invoke["body_encoded"] else invoke["body"])

    monkeypatch.delenv("MODELFN_SHADOW_TARGET")  # the shadow function: same code, no target of its own
    app.reset()
    before = len(live())
    assert aws_lambda.handler(payload, LocalContext("ab-shadow")) is None
    lines = live()[before:]
    by_metric = {line["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"]: line for line in lines if "_aws" in line}
    shadow = by_metric["ShadowRequests"]
    assert (shadow["function"], shadow["version"], shadow["ShadowErrors"]) == ("ab", "3", 0.0)
    agreement = by_metric["ShadowMaxAbsDiff"]
    # v3 answers x1.001, the live version x1 (v1) or x2 (v2, one call in ten): the largest gap is
    # on the row's largest input
    gap = abs(FACTORS[payload["live_version"]] - FACTORS["3"]) * np.max(ROW)
    assert agreement["output"] == "y" and agreement["ShadowMaxAbsDiff"] == pytest.approx(gap, rel=1e-3)
    assert invocation_metrics(lines)["trigger"] == "shadow-copy"
    assert recorded() == [invoke]  # the shadow sent nothing on


def test_a_copy_over_the_async_payload_limit_is_skipped_and_counted(
    live: Callable[[], list[dict[str, Any]]], recorded: Callable[[], list[Any]]
) -> None:
    rows = [[1.0, 2.0]] * 20_000  # about 280 KB of JSON
    response = call({"x": rows})
    assert response["statusCode"] == 200 and len(json.loads(response["body"])["y"]) == 20_000
    metrics = invocation_metrics(live())
    assert metrics["ShadowCopiesTooLarge"] == 1 and "ShadowCopiesSent" not in metrics
    assert recorded() == []


def test_a_refused_invoke_never_fails_the_live_answer(live: Callable[[], list[dict[str, Any]]], endpoint: str) -> None:
    # moto's Docker backend knows no function ab-shadow: the invoke is refused (404), as a missing
    # permission or a throttle would be, and boto3 makes one attempt only
    response = call({"x": ROW})
    assert response["statusCode"] == 200
    lines = live()
    assert invocation_metrics(lines)["ShadowCopiesFailed"] == 1
    (warning,) = [line for line in lines if line.get("message") == "shadow invoke failed"]
    assert warning["target"] == TARGET and warning["shadow_version"] == "3"


def test_events_send_their_copy_too(
    live: Callable[[], list[dict[str, Any]]], recorded: Callable[[], list[Any]]
) -> None:
    from handlers import aws_lambda

    oip = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
    answer = aws_lambda.handler(oip, LocalContext("ab"))
    assert answer["model_name"] == "ab"
    aws_lambda.handler({"x": ROW}, LocalContext("ab"))
    first, second = (json.loads(base64.b64decode(r["body"]) if r["body_encoded"] else r["body"]) for r in recorded())
    assert (first["input"]["kind"], first["input"]["payload"]) == ("document", oip)
    assert (second["input"]["kind"], second["input"]["payload"]) == ("codec", {"x": ROW})


def test_a_binary_body_and_its_outputs_survive_the_message(root: Path) -> None:
    from modelfn.registry import Registry

    fn = Registry.from_dir(root, names=["ab"]).traffic("ab").get("3")
    tensor = np.asarray(ROW, dtype=np.float32)
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    ).encode()
    source = ShadowInput("inference", header + tensor.tobytes(), header_length=str(len(header)))
    live = {"y": tensor * 2, "label": np.asarray([1], dtype=np.int64), "name": np.asarray(["cat"], dtype=object)}
    copy = ShadowCopy("ab", "3", "2", source, live)
    message = json.loads(copy.encoded())
    assert message[MARKER] == 1 and "base64" in message["input"]
    back = ShadowCopy.from_message(message)
    assert back.input == source
    assert all(np.array_equal(back.live[k], v) and back.live[k].dtype == v.dtype for k, v in live.items())
    assert np.allclose(back.input.feeds(fn)["x"], tensor)
