"""The core Service: both drivers (in-thread and batched on an event loop) give the same
answers, the checks happen in the order a client relies on, and each function keeps its own
body limit under the platform's cap."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from onnx_models import function_folder, row_sum

from modelfn.errors import InvalidInput, PayloadTooLarge
from modelfn.http import MB, HttpRequest, HttpResponse
from modelfn.registry import Registry
from modelfn.service import Service

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("functions")
    function_folder(root, "rows", row_sum(4), "[io]\nmax_body_mb = 0.001")
    function_folder(root, "big", row_sum(4), "[io]\nmax_body_mb = 8")
    return Registry.from_dir(root)


def post(path: str, document: object, **headers: str) -> HttpRequest:
    return HttpRequest("POST", path, {"content-type": "application/json", **headers}, json.dumps(document).encode())


async def both_drivers(service: Service, request: HttpRequest) -> tuple[HttpResponse, HttpResponse]:
    try:
        return service.handle(request), await service.handle_async(request)
    finally:
        await service.close()


@pytest.mark.parametrize(
    ("path", "document", "status"),
    [
        ("/functions/rows", {"x": [[1, 2, 3, 4], [5, 6, 7, 8]]}, 200),
        ("/functions/rows", {"x": [1, 2, 3, 4]}, 200),
        (
            "/v2/models/rows/infer",
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]},
            200,
        ),
        (
            "/v2/models/rows/versions/1/infer",
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [2] * 4}]},
            200,
        ),
        ("/functions/rows", {"x": [[1, 2]]}, 422),
        ("/functions/nope", {"x": [1]}, 404),
        ("/v2/models/rows/versions/9/infer", {"inputs": []}, 404),
    ],
)
def test_both_drivers_answer_alike(registry: Registry, path: str, document: object, status: int) -> None:
    sync, batched = asyncio.run(both_drivers(Service(registry), post(path, document)))
    assert sync.status == batched.status == status
    assert sync.encoded() == batched.encoded()


def test_answers_are_the_models_own(registry: Registry) -> None:
    response = Service(registry).handle(post("/functions/rows", {"x": [[1, 2, 3, 4], [0.5, 0.5, 0, 0]]}))
    assert response.status == 200 and response.body == {"total": [10.0, 1.0]}


def test_the_key_is_checked_before_the_route_so_nothing_answers_but_401_without_it(registry: Registry) -> None:
    service = Service(registry, key=KEY)
    for method, path in [("POST", "/functions/rows"), ("GET", "/nowhere"), ("DELETE", "/functions"), ("GET", "/docs")]:
        response = service.handle(HttpRequest(method, path))
        assert (response.status, response.body["code"]) == (401, "unauthorized"), (method, path)
    assert service.handle(HttpRequest("GET", "/v2/health/live")).status == 200
    assert service.handle(HttpRequest("GET", "/nowhere", {"x-api-key": KEY})).status == 404


def test_each_function_keeps_its_own_limit_under_the_platform_cap(registry: Registry) -> None:
    assert Service(registry).limit("rows") == int(0.001 * MB)
    assert Service(registry).limit("big") == 8 * MB
    assert Service(registry, platform_limit_bytes=6 * MB).limit("big") == 6 * MB
    assert Service(registry, max_body_bytes=2 * MB).limit("rows") == 2 * MB
    assert Service(registry).limit("unknown") == 8 * MB  # the largest, then the route says 404
    large = post("/functions/rows", {"x": [[1.5, 2.5, 3.5, 4.5]] * 100})
    answer = Service(registry).handle(large)
    assert answer.status == 413 and answer.body["error"].startswith(f"request body is {len(large.body)} bytes")


def test_events_go_through_the_same_pipeline(registry: Registry) -> None:
    service = Service(registry)
    assert service.predict("rows", b'{"x": [1, 1, 1, 1]}', "application/json") == {"total": 4.0}
    assert service.predict("rows", payload={"x": [[2, 2, 2, 2]]}) == {"total": [8.0]}
    with pytest.raises(InvalidInput):
        service.predict("rows", payload={"x": [[2, 2]]})
    with pytest.raises(PayloadTooLarge):
        service.predict("rows", b" " * 2000 + b'{"x": [1, 1, 1, 1]}', "application/json")
    inferred = service.infer("rows", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [3] * 4}]})
    assert inferred["outputs"] == [{"name": "total", "datatype": "FP32", "shape": [1], "data": [12.0]}]


def test_concurrent_async_requests_are_merged_into_one_run(tmp_path: Path) -> None:
    function_folder(tmp_path, "rows", row_sum(4), "[batching]\nmax_batch_size = 64\nmax_latency_ms = 50")
    service = Service(Registry.from_dir(tmp_path))
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)

    async def many() -> list[HttpResponse]:
        try:
            return list(
                await asyncio.gather(
                    *(service.handle_async(post("/functions/rows", {"x": [r.tolist()]})) for r in rows)
                )
            )
        finally:
            await service.close()

    answers = asyncio.run(many())
    assert [a.body["total"] for a in answers] == [[float(r.sum())] for r in rows]
    assert max(service.batch_sizes) > 1
