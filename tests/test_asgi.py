"""The core's ASGI server (`modelfn serve`, the Cloud Run app) under a real uvicorn on loopback."""

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
    label, proba = offline("breast-cancer", {"X": cancer_rows[:2]})
    assert body["id"] == "7" and body["model_name"] == "breast-cancer" and body["model_version"] == "1"
    assert body["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [2], "data": label.tolist()}
    assert body["outputs"][1]["shape"] == [2, 2]
    assert np.allclose(body["outputs"][1]["data"], proba.ravel())


def offline(name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The oracle: the model run directly by ONNX Runtime, no modelfn code in between."""
    import onnxruntime as ort

    return list(ort.InferenceSession(str(FUNCTIONS / name / "model.onnx")).run(None, feeds))


def test_versioned_routes_answer_like_the_unversioned_ones(server: LiveServer, cancer_rows: np.ndarray) -> None:
    request = {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": cancer_rows[5].tolist()}]}
    plain = httpx.post(f"{server.url}/v2/models/breast-cancer/infer", json=request)
    versioned = httpx.post(f"{server.url}/v2/models/breast-cancer/versions/1/infer", json=request)
    assert plain.status_code == versioned.status_code == 200 and plain.json() == versioned.json()
    assert versioned.json()["outputs"][0]["data"] == offline("breast-cancer", {"X": cancer_rows[5:6]})[0].tolist()
    meta = httpx.get(f"{server.url}/v2/models/breast-cancer/versions/1")
    assert meta.json() == httpx.get(f"{server.url}/v2/models/breast-cancer").json()
    ready = httpx.get(f"{server.url}/v2/models/breast-cancer/versions/1/ready")
    assert ready.json() == {"name": "breast-cancer", "ready": True}
    missing = httpx.post(f"{server.url}/v2/models/breast-cancer/versions/2/infer", json=request)
    assert missing.status_code == 404
    assert missing.json()["error"] == "function 'breast-cancer' has no version '2'; it has ['1']"


def test_paths_are_matched_without_their_trailing_slash_and_head_answers_like_get(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/v2/health/live/").json() == {"live": True}
    head = httpx.head(f"{server.url}/functions")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(httpx.get(f"{server.url}/functions").content)
    wrong = httpx.put(f"{server.url}/functions/breast-cancer", json={})
    assert (
        wrong.status_code == 405 and wrong.json()["error"] == "PUT is not allowed on /functions/breast-cancer; use POST"
    )


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


def test_openapi_document_is_written_from_the_route_table(server: LiveServer) -> None:
    from modelfn.routes import ROUTES

    spec = httpx.get(f"{server.url}/openapi.json").json()
    documented = {(method.upper(), path) for path, methods in spec["paths"].items() for method in methods}
    assert documented == {(r.method, r.template) for r in ROUTES if r.tag != "documentation"}
    name = spec["paths"]["/functions/{name}"]["post"]["parameters"][0]
    assert name["schema"]["enum"] == ["breast-cancer", "digits"]


def test_docs_work_offline_from_the_packaged_swagger_ui(server: LiveServer) -> None:
    pytest.importorskip("swagger_ui_bundle", reason="Swagger UI's files come with the server extra")
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/docs/swagger-ui-bundle.js"' in page.text and "cdn" not in page.text.lower()
    script = httpx.get(f"{server.url}/docs/swagger-ui-bundle.js")
    assert script.status_code == 200 and b"SwaggerUIBundle" in script.content
    assert httpx.get(f"{server.url}/docs/swagger-ui.css").status_code == 200
    assert httpx.get(f"{server.url}/docs/secrets.txt").status_code == 404


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


def test_each_function_keeps_its_own_body_limit_in_one_server(tmp_path: Path) -> None:
    function_folder(tmp_path, "small", row_sum(4), "[io]\nmax_body_mb = 0.01")
    function_folder(tmp_path, "large", row_sum(4), "[io]\nmax_body_mb = 1")
    body = b'{"x": [' + b",".join([b"[1.5, 2.5, 3.5, 4.5]"] * 1000) + b"]}"  # about 21 KB
    with LiveServer(create_app(Registry.from_dir(tmp_path))) as live:
        small = httpx.post(f"{live.url}/functions/small", content=body, headers={"content-type": "application/json"})
        large = httpx.post(f"{live.url}/functions/large", content=body, headers={"content-type": "application/json"})
    assert small.status_code == 413
    assert small.json()["error"] == f"request body is {len(body)} bytes; the limit here is 10485 bytes (0.0 MB)"
    assert large.status_code == 200 and large.json() == {"total": [12.0] * 1000}


@pytest.mark.slow
def test_health_probe_is_answered_while_a_32_mb_body_is_decoded(tmp_path: Path, cancer_rows: np.ndarray) -> None:
    """Decoding and encoding a large body run off the event loop: the liveness probe is
    answered while the large request is still in flight. The probe latencies are printed
    (timings are measured in bench/, never asserted)."""
    import json
    import threading
    import time

    rows = np.tile(cancer_rows, (110, 1))[:110_000]
    body = json.dumps({"X": rows.tolist()}).encode()
    assert len(body) > 30 * 1024 * 1024
    app = create_app(Registry.from_dir(FUNCTIONS, ["breast-cancer"]), max_body_mb=64)
    answered: dict[str, object] = {}
    probes: list[tuple[float, float]] = []  # (sent, answered), monotonic

    with LiveServer(app) as live:

        def large() -> None:
            response = httpx.post(
                f"{live.url}/functions/breast-cancer",
                content=body,
                headers={"content-type": "application/json"},
                timeout=300,
            )
            answered["status"], answered["labels"], answered["at"] = (
                response.status_code,
                len(response.json()["label"]),
                time.monotonic(),
            )

        worker = threading.Thread(target=large)
        worker.start()
        with httpx.Client(timeout=60) as client:
            while worker.is_alive():
                sent = time.monotonic()
                assert client.get(f"{live.url}/v2/health/live").json() == {"live": True}
                probes.append((sent, time.monotonic()))
                time.sleep(0.02)
        worker.join()
    assert answered["status"] == 200 and answered["labels"] == len(rows)
    during = [p for p in probes if p[1] < answered["at"]]  # type: ignore[operator]
    assert len(during) >= 2, "no liveness answer arrived while the large request was in flight"
    waits = sorted(end - start for start, end in during)
    print(
        f"\nliveness during a {len(body) / 2**20:.0f} MB request: {len(during)} probes, "
        f"median {waits[len(waits) // 2] * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms"
    )
