"""tritonclient, an existing Open Inference Protocol client, against our servers in its
default binary mode and in JSON: the local server (the Cloud Run app, a real uvicorn on
loopback) and the Lambda handler (binary bodies base64-encoded both ways, as API Gateway
carries them). Every answer is compared with ONNX Runtime run directly on the model file."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

triton = pytest.importorskip("tritonclient.http", reason="the OIP client tests need tritonclient[http]")

from live_server import LiveServer  # noqa: E402
from support.oip_client import check_live_server, onnxruntime_outputs, parse_response, request_body  # noqa: E402

from handlers.local.aws import LocalContext  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CANCER = ROOT / "functions" / "breast-cancer" / "model.onnx"


@pytest.mark.slow
def test_tritonclient_in_binary_and_json_mode_against_the_local_server(cancer_rows: np.ndarray) -> None:
    from modelfn.asgi import create_app
    from modelfn.registry import Registry

    with LiveServer(create_app(Registry.from_dir(names=["breast-cancer"]))) as live:
        check_live_server(live.url, "breast-cancer", CANCER, {"X": cancer_rows[:5]})


def _lambda_infer(body: bytes, header_length: int | None) -> dict[str, Any]:
    from handlers import aws_lambda

    headers = {"content-type": "application/octet-stream"}
    if header_length is not None:
        headers["inference-header-content-length"] = str(header_length)
    event = {
        "version": "2.0",
        "rawPath": "/v2/models/breast-cancer/infer",
        "headers": headers,
        "requestContext": {"http": {"method": "POST"}, "stage": "$default"},
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }
    return dict(aws_lambda.handler(event, LocalContext("triton")))


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_bodies_through_the_lambda_handler(
    binary: bool, cancer_rows: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from handlers.aws import app

    monkeypatch.setenv("MODELFN_FUNCTION", "breast-cancer")
    app.reset()
    feeds = {"X": cancer_rows[:3]}
    body, length = request_body(feeds, binary, outputs=["probabilities", "label"], binary_outputs=binary)
    response = _lambda_infer(body, length)
    assert response["statusCode"] == 200
    raw = base64.b64decode(response["body"]) if response["isBase64Encoded"] else response["body"].encode()
    answer_length = response["headers"].get("inference-header-content-length")
    assert (answer_length is not None) is binary
    result = parse_response(raw, int(answer_length) if answer_length else None)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities", "label"]
    for name, value in onnxruntime_outputs(CANCER, feeds).items():
        np.testing.assert_allclose(result.as_numpy(name), value, rtol=1e-6)


def test_binary_data_without_its_header_length_is_refused_with_the_reason(
    cancer_rows: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from handlers.aws import app

    monkeypatch.setenv("MODELFN_FUNCTION", "breast-cancer")
    app.reset()
    body, _ = request_body({"X": cancer_rows[:2]}, binary=True)
    response = _lambda_infer(body, None)
    assert response["statusCode"] == 400
    assert "needs the Inference-Header-Content-Length header" in json.loads(response["body"])["error"]
