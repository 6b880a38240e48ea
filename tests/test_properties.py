"""Properties of the tensor codec and the Open Inference Protocol, on identity models of many
dtypes and shapes (fixed, dynamic, batched, scalar): every array of the model's dtype and a
valid shape comes back exactly, through the JSON the HTTP service writes and through the binary
tensor extension; every invalid one is refused with a 4xx `ModelfnError`, never with another
exception."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays, from_dtype
from onnx import TensorProto
from onnx_models import function_folder, identity
from support.oip_client import parse_response, request_body

from modelfn import protocol
from modelfn.errors import ModelfnError
from modelfn.function import ModelFunction
from modelfn.http import HttpRequest
from modelfn.registry import Registry
from modelfn.service import Service

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Case:
    """An identity model `y = x` of one element type and ONNX shape (a string is a dynamic axis)."""

    name: str
    elem_type: int
    dtype: np.dtype
    datatype: str
    shape: tuple[int | str, ...]

    @property
    def batched(self) -> bool:
        return bool(self.shape) and isinstance(self.shape[0], str)

    @property
    def kind(self) -> str:
        return self.dtype.kind


CASES = [
    Case("f32-batch", TensorProto.FLOAT, np.dtype(np.float32), "FP32", ("batch", 3)),
    Case("f64-dynamic", TensorProto.DOUBLE, np.dtype(np.float64), "FP64", ("n", "m")),
    Case("f16-batch", TensorProto.FLOAT16, np.dtype(np.float16), "FP16", ("batch",)),
    Case("i64-batch", TensorProto.INT64, np.dtype(np.int64), "INT64", ("batch", 4)),
    Case("i32-scalar", TensorProto.INT32, np.dtype(np.int32), "INT32", ()),
    Case("i16-middle-dynamic", TensorProto.INT16, np.dtype(np.int16), "INT16", (2, "n")),
    Case("i8-fixed", TensorProto.INT8, np.dtype(np.int8), "INT8", (3,)),
    Case("u8-image", TensorProto.UINT8, np.dtype(np.uint8), "UINT8", ("batch", 2, 2)),
    Case("u64-batch", TensorProto.UINT64, np.dtype(np.uint64), "UINT64", ("batch",)),
    Case("bool-batch", TensorProto.BOOL, np.dtype(np.bool_), "BOOL", ("batch", 2)),
    Case("string-batch", TensorProto.STRING, np.dtype(object), "BYTES", ("batch", 2)),
]
IDS = [c.name for c in CASES]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("identities")
    for case in CASES:
        function_folder(root, case.name, identity(case.elem_type, list(case.shape)))
    registry = Registry.from_dir(root)
    registry.load_all()
    assert not registry.failed, registry.failed
    return registry


@pytest.fixture(scope="module")
def service(registry: Registry) -> Service:
    return Service(registry)


# --- strategies -----------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # ONNX strings are UTF-8: no lone surrogates


def elements(case: Case) -> st.SearchStrategy[Any]:
    if case.kind == "O":
        return TEXT
    if case.kind == "f":
        return from_dtype(case.dtype, allow_nan=False, allow_infinity=False)
    return from_dtype(case.dtype)


def valid_shape(case: Case, single: bool = False) -> st.SearchStrategy[tuple[int, ...]]:
    """A concrete shape the model takes; `single` leaves out a batched model's batch axis."""
    dims = [st.integers(1, 4) if isinstance(d, str) else st.just(d) for d in case.shape]
    return st.tuples(*(dims[1:] if single else dims))


def valid_array(case: Case, single: bool = False) -> st.SearchStrategy[np.ndarray]:
    return arrays(case.dtype, valid_shape(case, single), elements=elements(case))


def wrong_rank_shape(case: Case) -> st.SearchStrategy[tuple[int, ...]]:
    allowed = {len(case.shape)} | ({len(case.shape) - 1} if case.batched else set())
    ranks = [r for r in range(0, len(case.shape) + 3) if r not in allowed]
    return st.sampled_from(ranks).flatmap(lambda r: st.tuples(*[st.integers(1, 3)] * r))


@st.composite
def wrong_fixed_dim_shape(draw: st.DrawFn, case: Case) -> tuple[int, ...]:
    shape = list(draw(valid_shape(case)))
    axis = draw(st.sampled_from([axis for axis, d in enumerate(case.shape) if not isinstance(d, str)]))
    shape[axis] = draw(st.integers(1, 6).filter(lambda d: d != case.shape[axis]))
    return tuple(shape)


def bad_elements(case: Case) -> st.SearchStrategy[Any]:
    """A JSON value that cannot be an element of `case`'s dtype (under nan_policy = reject)."""
    if case.kind == "O":
        return st.one_of(st.integers(), st.floats(), st.booleans(), st.none())
    strings = TEXT
    if case.kind == "f":
        non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
        largest = float(np.finfo(case.dtype).max)
        if largest == float(np.finfo(np.float64).max):
            return st.one_of(strings, non_finite)
        too_big = st.tuples(st.floats(largest * 2, 1e300), st.booleans()).map(lambda t: -t[0] if t[1] else t[0])
        return st.one_of(strings, non_finite, too_big)
    fractions = st.floats(-1e6, 1e6).filter(lambda v: v != int(v))
    if case.kind == "b":
        return st.one_of(strings, fractions, st.integers().filter(lambda v: v not in (0, 1)))
    limits = np.iinfo(case.dtype)
    out_of_range = st.one_of(st.integers(max_value=int(limits.min) - 1), st.integers(min_value=int(limits.max) + 1))
    return st.one_of(strings, fractions, out_of_range)


@st.composite
def spoiled_values(draw: st.DrawFn, case: Case) -> Any:
    """A valid array as JSON values with one element swapped for a bad one."""
    array = draw(valid_array(case))
    values = array.reshape(-1).tolist()
    values[draw(st.integers(0, len(values) - 1))] = draw(bad_elements(case))
    return np.asarray(values, dtype=object).reshape(array.shape).tolist()


@st.composite
def wrongly_shaped(draw: st.DrawFn, case: Case) -> np.ndarray:
    shapes = [wrong_rank_shape(case)]
    if any(not isinstance(d, str) for d in case.shape):
        shapes.append(wrong_fixed_dim_shape(case))
    return draw(arrays(case.dtype, st.one_of(shapes), elements=elements(case)))


# --- helpers --------------------------------------------------------------------------------


def post(service: Service, path: str, document: Any) -> tuple[int, Any]:
    """Through the shared HTTP service and the exact JSON bytes it answers with."""
    response = service.handle(HttpRequest("POST", path, {"content-type": "application/json"}, json.dumps(document)))
    return response.status, json.loads(response.encoded())


def assert_exactly(case: Case, got: Any, sent: np.ndarray) -> None:
    back = np.asarray(got, dtype=case.dtype)
    assert back.shape == sent.shape
    assert back.tolist() == sent.tolist()
    if case.kind == "f":  # -0.0 == 0.0: the sign must survive too
        assert np.array_equal(np.signbit(back), np.signbit(sent))


def v2_request(case: Case, array: np.ndarray | None = None, **override: Any) -> dict[str, Any]:
    """One input tensor `x` holding `array`; `override` replaces its fields (shape, datatype, data)."""
    tensor: dict[str, Any] = {"name": "x", "datatype": case.datatype}
    if array is not None:
        tensor |= {"shape": list(array.shape), "data": array.reshape(-1).tolist()}
    return {"inputs": [tensor | override]}


def refused(call: Callable[[], Any]) -> ModelfnError:
    with pytest.raises(ModelfnError) as caught:
        call()
    assert 400 <= caught.value.status < 500, (caught.value.status, caught.value.message)
    assert caught.value.message
    return caught.value


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
@PROPERTY
@given(data=st.data())
def test_valid_arrays_round_trip_through_the_simple_route(service: Service, case: Case, data: st.DataObject) -> None:
    single = case.batched and data.draw(st.booleans(), label="single item")
    array = data.draw(valid_array(case, single), label="x")
    status, body = post(service, f"/functions/{case.name}", {"x": array.tolist()})
    assert status == 200, body
    assert set(body) == {"y"}
    assert_exactly(case, body["y"], array)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@PROPERTY
@given(data=st.data())
def test_valid_arrays_round_trip_through_the_v2_protocol(service: Service, case: Case, data: st.DataObject) -> None:
    array = data.draw(valid_array(case), label="x")
    status, body = post(service, f"/v2/models/{case.name}/infer", v2_request(case, array) | {"id": "p1"})
    assert status == 200, body
    assert (body["model_name"], body["id"]) == (case.name, "p1")
    [out] = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("y", case.datatype, list(array.shape))
    assert_exactly(case, out["data"], array.reshape(-1))


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
@PROPERTY
@given(data=st.data())
def test_wrong_shapes_are_refused(registry: Registry, case: Case, data: st.DataObject) -> None:
    fn: ModelFunction = registry.load(case.name)
    array = data.draw(wrongly_shaped(case), label="x")
    refused(lambda: fn.predict(json.dumps({"x": array.tolist()}).encode()))
    refused(lambda: fn.infer_v2(v2_request(case, array)))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@PROPERTY
@given(data=st.data())
def test_values_of_the_wrong_kind_are_refused(registry: Registry, case: Case, data: st.DataObject) -> None:
    """Strings for numbers, fractions or out-of-range values for integers, NaN, Infinity and
    overflow for floats, numbers or null among strings: one bad element spoils the request."""
    fn: ModelFunction = registry.load(case.name)
    values = data.draw(spoiled_values(case), label="x")
    refused(lambda: fn.predict(json.dumps({"x": values}).encode()))
    flat = np.asarray(values, dtype=object)
    refused(lambda: fn.infer_v2(v2_request(case, shape=list(flat.shape), data=flat.reshape(-1).tolist())))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@PROPERTY
@given(data=st.data())
def test_v2_tensors_that_contradict_themselves_are_refused(registry: Registry, case: Case, data: st.DataObject) -> None:
    """A datatype other than the model's, or a shape the data does not fill."""
    fn: ModelFunction = registry.load(case.name)
    array = data.draw(valid_array(case), label="x")
    other = data.draw(st.sampled_from(sorted({c.datatype for c in CASES} - {case.datatype})), label="datatype")
    error = refused(lambda: fn.infer_v2(v2_request(case, array, datatype=other)))
    assert f"datatype {other!r} given" in error.message
    values = array.reshape(-1).tolist()
    values += values[:1] * data.draw(st.integers(1, 3), label="extra values")
    error = refused(lambda: fn.infer_v2(v2_request(case, array, data=values)))
    assert "do not fill shape" in error.message


@pytest.mark.parametrize("case", CASES, ids=IDS)
@PROPERTY
@given(data=st.data())
def test_valid_arrays_round_trip_through_the_binary_extension(
    registry: Registry, case: Case, data: st.DataObject
) -> None:
    """tritonclient's binary bodies (raw little-endian bytes, BYTES length-prefixed), answered in binary."""
    fn: ModelFunction = registry.load(case.name)
    array = data.draw(valid_array(case), label="x")
    sent = (
        np.array([s.encode() for s in array.reshape(-1)], dtype=object).reshape(array.shape)
        if case.kind == "O"
        else array
    )
    body, length = request_body({"x": sent}, binary=True)
    request = protocol.decode_body(body, length, fn.inputs, "reject", outputs=fn.outputs)
    answer, answer_length = protocol.encode_body(fn.name, fn.run(request.feeds), fn.outputs, request)
    got = parse_response(answer, answer_length).as_numpy("y")
    if case.kind == "O":
        got = np.array([v.decode() for v in got.reshape(-1)], dtype=object).reshape(got.shape)
    assert_exactly(case, got, array)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@PROPERTY
@given(data=st.data())
def test_any_shape_and_data_is_answered_or_refused_with_a_4xx(
    registry: Registry, case: Case, data: st.DataObject
) -> None:
    """Huge, negative, boolean or fractional dimensions and data of any JSON shape: never another exception."""
    fn: ModelFunction = registry.load(case.name)
    dims = st.one_of(st.integers(-3, 8), st.integers(min_value=2**31), st.booleans(), st.floats(0, 4))
    shape = data.draw(st.one_of(st.lists(dims, max_size=5), JSON_VALUES), label="shape")
    values = data.draw(JSON_VALUES, label="data")
    document = v2_request(case, shape=shape, data=values)
    try:
        fn.infer_v2(json.loads(json.dumps(document)))
    except ModelfnError as error:
        assert 400 <= error.status < 500, (error.status, error.message)


def test_nan_passes_when_the_policy_allows_it(tmp_path: Path) -> None:
    """The one exception to the NaN refusal: `io.nan_policy = "allow"`."""
    function_folder(tmp_path, "lenient", identity(TensorProto.FLOAT, ["batch"]), '[io]\nnan_policy = "allow"')
    fn = Registry.from_dir(tmp_path).load("lenient")
    assert fn.predict(b'{"x": [NaN, Infinity, 1.5]}') == {"y": [None, None, 1.5]}
