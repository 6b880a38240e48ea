"""The local server (the Cloud Run app) under a real uvicorn on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from live_server import LiveServer
from onnx_models import function_folder, row_sum

from modelfn.asgi import create_app
from modelfn.registry import Registry

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    app = create_app(Registry.from_dir(FUNCTIONS, ["breast-cancer", "digits"]), max_body_mb=1)
    with LiveServer(app) as live:
        yield live


def test_health_and_readiness(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    ready = httpx.get(f"{server.url}/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert httpx.get(f"{server.url}/v2/models/digits/ready").json() == {"name": "digits", "ready": True}


def test_simple_route_predicts_like_the_model_offline(server: LiveServer, cancer_rows: np.ndarray) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(FUNCTIONS / "breast-cancer" / "model.onnx"))
    label, proba = session.run(None, {"X": cancer_rows[:3]})
    one = httpx.post(f"{server.url}/functions/breast-cancer", json={"X": cancer_rows[0].tolist()}).json()
    assert one["label"] == int(label[0]) and np.allclose(one["probabilities"], proba[0])
    many = httpx.post(f"{server.url}/functions/breast-cancer", json={"X": cancer_rows[:3].tolist()}).json()
    assert many["label"] == label.tolist() and np.allclose(many["probabilities"], proba)


def test_open_inference_protocol(server: LiveServer, cancer_rows: np.ndarray) -> None:
    meta = httpx.get(f"{server.url}/v2/models/breast-cancer").json()
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 30]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    request = {
        "id": "7",
        "inputs": [{"name": "X", "shape": [2, 30], "datatype": "FP32", "data": cancer_rows[:2].ravel().tolist()}],
    }
    body = httpx.post(f"{server.url}/v2/models/breast-cancer/infer", json=request).json()
    assert body["id"] == "7" and body["model_name"] == "breast-cancer"
    assert body["outputs"][0] == {
        "name": "label",
        "datatype": "INT64",
        "shape": [2],
        "data": body["outputs"][0]["data"],
    }
    assert body["outputs"][1]["shape"] == [2, 2]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "fragment"),
    [
        ("POST", "/functions/nope", {"json": {}}, 404, "unknown function 'nope'"),
        (
            "POST",
            "/functions/breast-cancer",
            {"content": b"{", "headers": {"content-type": "application/json"}},
            400,
            "malformed JSON",
        ),
        (
            "POST",
            "/functions/breast-cancer",
            {"content": b"", "headers": {"content-type": "application/json"}},
            400,
            "empty body",
        ),
        (
            "POST",
            "/functions/breast-cancer",
            {"content": b"a,b", "headers": {"content-type": "text/csv"}},
            415,
            "text/csv",
        ),
        ("POST", "/functions/breast-cancer", {"json": {"X": [1, 2]}}, 422, "input 'X'"),
        ("POST", "/functions/breast-cancer", {"json": {"X": ["a"] * 30}}, 422, "expected numbers"),
        ("POST", "/functions/breast-cancer", {"content": b"0" * (2 * 1024 * 1024)}, 413, "limit"),
        (
            "POST",
            "/functions/digits",
            {"content": b"\x89PNG\r\n\x1a\nxx", "headers": {"content-type": "image/png"}},
            400,
            "image",
        ),
    ],
)
def test_bad_requests_get_a_status_and_a_message_never_a_traceback(
    server: LiveServer, method: str, path: str, kwargs: dict, status: int, fragment: str
) -> None:
    response = httpx.request(method, f"{server.url}{path}", **kwargs)
    assert response.status_code == status
    body = response.json()
    assert fragment in body["error"] and "Traceback" not in response.text


def test_openapi_document_and_docs(server: LiveServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/functions/{name}", "/v2/models/{name}/infer", "/v2/health/ready"} <= set(spec["paths"])
    assert httpx.get(f"{server.url}/docs").status_code == 200


@pytest.fixture
def batching_server(tmp_path: Path) -> Iterator[LiveServer]:
    function_folder(tmp_path, "rows", row_sum(4), "[batching]\nmax_batch_size = 64\nmax_latency_ms = 30")
    with LiveServer(create_app(Registry.from_dir(tmp_path))) as live:
        yield live


async def _post_many(url: str, payloads: list[object], timeout: float = 30) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=timeout) as client:
        return list(await asyncio.gather(*(client.post(f"{url}/functions/rows", json=p) for p in payloads)))


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(batching_server: LiveServer) -> None:
    rng = np.random.default_rng(0)
    payloads: list[np.ndarray] = [rng.integers(0, 1000, size=(1 + i % 3, 4)).astype(np.float32) for i in range(48)]
    responses = asyncio.run(_post_many(batching_server.url, [{"x": p.tolist()} for p in payloads]))
    for payload, response in zip(payloads, responses, strict=True):
        assert response.status_code == 200
        assert response.json() == {"total": payload.sum(axis=1).tolist()}
    sizes = list(batching_server.app.service.batch_sizes)
    assert sum(sizes) == sum(len(p) for p in payloads)
    assert max(sizes) > 1, f"no request was merged: {sizes}"


def test_a_bad_request_in_a_burst_fails_alone(batching_server: LiveServer) -> None:
    payloads: list[object] = [{"x": [[i, i, i, i]]} for i in range(10)]
    payloads[4] = {"x": [[1, 2]]}
    responses = asyncio.run(_post_many(batching_server.url, payloads))
    assert [r.status_code for r in responses] == [200] * 4 + [422] + [200] * 5
    assert [r.json()["total"] for i, r in enumerate(responses) if i != 4] == [[4.0 * i] for i in range(10) if i != 4]


def test_clients_that_give_up_do_not_disturb_the_others(batching_server: LiveServer) -> None:
    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=0.001) as impatient:
            quitters = [
                impatient.post(f"{batching_server.url}/functions/rows", json={"x": [[9, 9, 9, 9]]}) for _ in range(20)
            ]
            await asyncio.gather(*quitters, return_exceptions=True)
        return await _post_many(batching_server.url, [{"x": [[i, 0, 0, 0]]} for i in range(20)])

    responses = asyncio.run(scenario())
    assert [r.json()["total"] for r in responses] == [[float(i)] for i in range(20)]


def test_model_that_fails_to_load_reports_not_ready(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "function.toml").write_text('name = "broken"\n[model]\nsource = "model.onnx"\n')
    (folder / "model.onnx").write_bytes(b"not an onnx model")
    with LiveServer(create_app(Registry.from_dir(tmp_path))) as live:
        ready = httpx.get(f"{live.url}/v2/health/ready")
        assert ready.status_code == 503
        assert "could not load" in ready.json()["failed"]["broken"]
        assert httpx.get(f"{live.url}/v2/models/broken/ready").status_code == 503
        predict = httpx.post(f"{live.url}/functions/broken", json={"x": 1})
        assert predict.status_code == 503 and "not available" in predict.json()["error"]


def test_api_key_is_required_when_configured(tmp_path: Path) -> None:
    with LiveServer(create_app(Registry.from_dir(FUNCTIONS, ["breast-cancer"]), key="s3cret")) as live:
        url = f"{live.url}/functions/breast-cancer"
        payload = {"X": [0.0] * 30}
        assert httpx.post(url, json=payload).status_code == 401
        assert httpx.post(url, json=payload, headers={"x-api-key": "wrong"}).status_code == 401
        assert httpx.post(url, json=payload, headers={"x-api-key": "s3cret"}).status_code == 200
        assert httpx.get(f"{live.url}/v2/models/breast-cancer").status_code == 401
        assert httpx.get(f"{live.url}/v2/health/live").status_code == 200
