"""Every provider's HTTP path answers the same requests with the model's own outputs: the
local server (the core's ASGI app under uvicorn), the Lambda handler, the Cloud Functions
HTTP function and the Azure HTTP trigger, each checked against ONNX Runtime run directly on
the model file (no modelfn code in the oracle), on the simple route and on the Open
Inference Protocol's plain and versioned routes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from live_server import LiveServer
from support.providers import azure_request, lambda_http_event

from handlers.local.aws import LocalContext

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "functions" / "breast-cancer" / "model.onnx"
Call = Callable[[str, str, bytes], tuple[int, Any]]


def lambda_call(method: str, path: str, body: bytes) -> tuple[int, Any]:
    from handlers import aws_lambda

    response = aws_lambda.handler(lambda_http_event(method, path, body), LocalContext("parity"))
    return response["statusCode"], json.loads(response["body"])


def gcp_call(method: str, path: str, body: bytes) -> tuple[int, Any]:
    import flask

    from handlers import gcp_functions

    with flask.Flask(__name__).test_request_context(
        path, method=method, headers={"content-type": "application/json"}, data=body
    ):
        response = gcp_functions.serve_http(flask.request)
    return response.status_code, json.loads(response.get_data())


def azure_call(method: str, path: str, body: bytes) -> tuple[int, Any]:

    from handlers.az.http import serve
    from handlers.azure_functions import ServedFunction, resolve_spec

    response = serve(ServedFunction(resolve_spec("breast-cancer")), azure_request(method, path, body))
    return response.status_code, json.loads(response.get_body())


@pytest.fixture(scope="module")
def local_server() -> Iterator[LiveServer]:
    from modelfn.asgi import create_app
    from modelfn.registry import Registry

    with LiveServer(create_app(Registry.from_dir(names=["breast-cancer"]))) as live:
        yield live


@pytest.fixture(params=["local", "aws", "gcp", "azure"])
def call(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Call:
    from handlers.aws import app
    from handlers.gcp import instance

    monkeypatch.setenv("MODELFN_FUNCTION", "breast-cancer")
    monkeypatch.setattr(instance, "_services", {})
    app.reset()
    if request.param == "local":
        url = request.getfixturevalue("local_server").url

        def local_call(method: str, path: str, body: bytes) -> tuple[int, Any]:
            response = httpx.request(method, url + path, content=body, headers={"content-type": "application/json"})
            return response.status_code, response.json()

        return local_call
    return {"aws": lambda_call, "gcp": gcp_call, "azure": azure_call}[request.param]


@pytest.fixture(scope="module")
def oracle(cancer_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    label, probabilities = ort.InferenceSession(str(MODEL)).run(None, {"X": cancer_rows[:4]})
    return label, probabilities


def test_simple_route_gives_the_models_outputs(call: Call, cancer_rows: np.ndarray, oracle: Any) -> None:
    label, probabilities = oracle
    status, answer = call("POST", "/functions/breast-cancer", json.dumps({"X": cancer_rows[:4].tolist()}).encode())
    assert status == 200 and answer["label"] == label.tolist()
    assert np.allclose(answer["probabilities"], probabilities, atol=1e-6)
    status, one = call("POST", "/functions/breast-cancer", json.dumps({"X": cancer_rows[0].tolist()}).encode())
    assert status == 200 and one["label"] == int(label[0])


@pytest.mark.parametrize("path", ["/v2/models/breast-cancer/infer", "/v2/models/breast-cancer/versions/1/infer"])
def test_open_inference_routes_give_the_models_outputs(
    call: Call, path: str, cancer_rows: np.ndarray, oracle: Any
) -> None:
    label, probabilities = oracle
    request = {
        "id": "p",
        "inputs": [{"name": "X", "shape": [4, 30], "datatype": "FP32", "data": cancer_rows[:4].ravel().tolist()}],
    }
    status, answer = call("POST", path, json.dumps(request).encode())
    assert status == 200
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("breast-cancer", "1", "p")
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"]["data"] == label.tolist() and outputs["label"]["shape"] == [4]
    assert np.allclose(outputs["probabilities"]["data"], probabilities.ravel(), atol=1e-6)


def test_an_unknown_version_is_404_everywhere(call: Call, cancer_rows: np.ndarray) -> None:
    request = {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": cancer_rows[0].tolist()}]}
    status, answer = call("POST", "/v2/models/breast-cancer/versions/7/infer", json.dumps(request).encode())
    assert (status, answer["code"]) == (404, "not_found")
    assert answer["error"] == "function 'breast-cancer' has no version '7'; it has ['1']"
    status, answer = call("GET", "/v2/models/breast-cancer/versions/1", b"")
    assert status == 200 and answer["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 30]}]
