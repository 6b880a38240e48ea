"""The core Service: both drivers (in-thread and batched on an event loop) give the same
answers, the checks happen in the order a client relies on, and each function keeps its own
body limit under the platform's cap."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
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


def test_routes_matched_once_answer_as_the_first_time_and_only_served_paths_are_kept(registry: Registry) -> None:
    service = Service(registry, key=KEY)
    first = service.admit("POST", "/functions/rows", {"x-api-key": KEY})
    first[1]["name"] = "changed by a caller"  # the kept match is not the caller's dict
    again = service.admit("POST", "/functions/rows", {"x-api-key": KEY})
    assert (again[0].operation, again[1]) == (first[0].operation, {"name": "rows"})
    with pytest.raises(Exception, match="API key"):  # the key is still checked on every request
        service.admit("POST", "/functions/rows", {})
    for i in range(50):  # names not served, versions, other methods: matched each time, never kept
        service.admit("POST", f"/functions/not-served-{i}", {"x-api-key": KEY})
        service.admit("POST", f"/v2/models/rows/versions/{i}/infer", {"x-api-key": KEY})
    with pytest.raises(Exception, match="not allowed"):
        service.admit("GET", "/functions/rows", {"x-api-key": KEY})
    assert set(service._admitted) == {("POST", "/functions/rows")}
    answer = service.handle(post("/functions/rows", {"x": [[1, 2, 3, 4]]}, **{"x-api-key": KEY}))
    assert answer.body == {"total": [10.0]}


def test_request_header_names_are_lower_case_and_the_callers_dict_is_left_alone() -> None:
    sent = {"Content-Type": "application/json", "X-Api-Key": "k"}
    assert HttpRequest("POST", "/", sent).headers == {"content-type": "application/json", "x-api-key": "k"}
    lower = {"content-type": "application/json", "x-modelfn-key": "7"}
    request = HttpRequest("POST", "/", lower)
    request.headers["x-api-key"] = "k"
    assert request.headers["content-type"] == "application/json" and "x-api-key" not in lower
    assert HttpRequest("GET", "/", {"1": "digits", "X": "y"}).headers == {"1": "digits", "x": "y"}


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


def _masked_sum() -> onnx.ModelProto:
    """total = sum of input_ids where attention_mask is 1, per row: padding changes nothing."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])
    total = helper.make_tensor_value_info("total", TensorProto.INT64, ["batch"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axes"], ["total"], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "masked_sum", [ids, mask], [total], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


WORD_LENGTHS = '''
from pathlib import Path

import numpy as np


def tokenize(texts):
    """Each word's length is its token id; rows padded to the longest text with mask 0. Every
    call is logged (how many texts it got), and "boom" is refused."""
    with open(Path(__file__).with_name("calls.log"), "a") as log:
        log.write(f"{len(texts)}\\n")
    if any("boom" in text for text in texts):
        raise ValueError("boom is not a word here")
    ids = [[len(word) for word in text.split()] for text in texts]
    width = max(len(row) for row in ids)
    return {
        "input_ids": np.array([row + [0] * (width - len(row)) for row in ids], dtype=np.int64),
        "attention_mask": np.array([[1] * len(row) + [0] * (width - len(row)) for row in ids], dtype=np.int64),
    }
'''


@pytest.mark.parametrize("padded", [True, False])
def test_a_batch_of_texts_is_tokenised_in_one_call_when_padding_is_safe(tmp_path: Path, padded: bool) -> None:
    batching = "[batching]\nmax_batch_size = 64\nmax_latency_ms = 50\n" + ("pad_value = 0\n" if padded else "")
    name = "padded" if padded else "alone"  # hook modules are kept by function name: one per case
    folder = function_folder(tmp_path, name, _masked_sum(), batching)
    toml = (folder / "function.toml").read_text()
    (folder / "function.toml").write_text(toml + '[io]\ncodec = "text"\n[hooks]\ntokenize = "hooks:tokenize"\n')
    (folder / "hooks.py").write_text(WORD_LENGTHS)
    service = Service(Registry.from_dir(tmp_path))
    texts = [" ".join("w" * (1 + (i + j) % 5) for j in range(1 + i % 4)) for i in range(12)] + ["a boom here"]

    async def many() -> list[HttpResponse]:
        try:
            service.registry.load(name)
            (folder / "calls.log").unlink(missing_ok=True)  # the warm-up's call, if any
            requests = (service.handle_async(post(f"/functions/{name}", {"text": text})) for text in texts)
            return list(await asyncio.gather(*requests))
        finally:
            await service.close()

    answers = asyncio.run(many())
    expected = [sum(len(word) for word in text.split()) for text in texts[:-1]]
    assert [(a.status, a.body["total"]) for a in answers[:-1]] == [(200, total) for total in expected]
    assert answers[-1].status == 422 and "boom is not a word here" in answers[-1].body["error"]
    calls = [int(line) for line in (folder / "calls.log").read_text().split()]
    if padded:  # the whole batch's texts went to the hook at once; refused, each went alone
        assert calls == [len(texts)] + [1] * len(texts)
    else:  # each request tokenised alone, merged only with requests of its own length
        assert calls == [1] * len(texts)
