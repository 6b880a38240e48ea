"""The Open Inference Protocol as an existing client speaks it: bodies built and answers parsed
by tritonclient's own code, in binary and JSON modes, decoded and encoded by `modelfn.protocol`,
the model run by ONNX Runtime and compared with ONNX Runtime run directly; and the requests a
hostile or careless client sends, each refused with a 4xx that names the problem."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto
from onnx_models import function_folder, identity, multi_io
from support.oip_client import onnxruntime_outputs, parse_response, request_body

from modelfn import protocol
from modelfn.errors import ModelfnError
from modelfn.function import ModelFunction
from modelfn.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
CANCER = ROOT / "functions" / "breast-cancer"

DTYPES = [
    (TensorProto.FLOAT, np.array([[1.5, -2.25, 3.0e38]], dtype=np.float32)),
    (TensorProto.DOUBLE, np.array([[1e-300, 2.5, -1e300]], dtype=np.float64)),
    (TensorProto.FLOAT16, np.array([[0.5, -1.0, 2048.0]], dtype=np.float16)),
    (TensorProto.INT8, np.array([[-128, 0, 127]], dtype=np.int8)),
    (TensorProto.INT16, np.array([[-32768, 1, 32767]], dtype=np.int16)),
    (TensorProto.INT32, np.array([[-(2**31), 7, 2**31 - 1]], dtype=np.int32)),
    (TensorProto.INT64, np.array([[-(2**63), 9, 2**63 - 1]], dtype=np.int64)),
    (TensorProto.UINT8, np.array([[0, 128, 255]], dtype=np.uint8)),
    (TensorProto.UINT16, np.array([[0, 1, 65535]], dtype=np.uint16)),
    (TensorProto.UINT32, np.array([[0, 1, 2**32 - 1]], dtype=np.uint32)),
    (TensorProto.UINT64, np.array([[0, 1, 2**64 - 1]], dtype=np.uint64)),
    (TensorProto.BOOL, np.array([[True, False, True]])),
    (TensorProto.STRING, np.array([["a", "b c", "ü\x00"]], dtype=object)),
]
IDS = [str(a.dtype) if a.dtype != object else "bytes" for _, a in DTYPES]


def _function(tmp_path: Path, model: Any, name: str = "m") -> ModelFunction:
    return ModelFunction(load_spec(function_folder(tmp_path, name, model)))


def _round_trip(fn: ModelFunction, body: bytes, header_length: int | None) -> tuple[Any, protocol.InferRequest]:
    """One request through the protocol functions and the model, the answer parsed by tritonclient."""
    request = protocol.decode_body(body, header_length, fn.inputs, "reject", outputs=fn.outputs)
    answer, answer_length = protocol.encode_body(fn.name, fn.run(request.feeds), fn.outputs, request)
    return parse_response(answer, answer_length), request


def _refused(call: Any, status: int, *fragments: str) -> ModelfnError:
    with pytest.raises(ModelfnError) as caught:
        call()
    error = caught.value
    assert error.status == status, (error.status, error.message)
    for fragment in fragments:
        assert fragment in error.message, error.message
    return error


# --- tritonclient, both modes ---------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_requests_match_onnxruntime_run_directly(binary: bool) -> None:
    fn = ModelFunction(load_spec(CANCER))
    from sklearn.datasets import load_breast_cancer

    rows = load_breast_cancer().data[:5].astype(np.float32)
    body, length = request_body({"X": rows}, binary, request_id="r-7")
    assert (length is not None) == binary
    result, request = _round_trip(fn, body, length)
    assert request.binary == {"label", "probabilities"}  # tritonclient asks for every output in binary
    expected = onnxruntime_outputs(CANCER / "model.onnx", {"X": rows})
    assert result.get_response()["id"] == "r-7"
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label", "probabilities"]
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_array_equal(result.as_numpy("probabilities"), expected["probabilities"])


@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (True, False), (False, True), (False, False)])
def test_requested_outputs_come_back_alone_in_the_mode_asked(binary_in: bool, binary_out: bool) -> None:
    fn = ModelFunction(load_spec(CANCER))
    rows = np.random.default_rng(3).random((2, 30), dtype=np.float32)
    body, length = request_body({"X": rows}, binary_in, outputs=["probabilities"], binary_outputs=binary_out)
    result, _ = _round_trip(fn, body, length)
    [output] = result.get_response()["outputs"]
    assert output["name"] == "probabilities"
    assert ("parameters" in output) == binary_out and ("data" in output) == (not binary_out)
    assert result.as_numpy("label") is None
    np.testing.assert_array_equal(
        result.as_numpy("probabilities"), onnxruntime_outputs(CANCER / "model.onnx", {"X": rows})["probabilities"]
    )


@pytest.mark.parametrize(("elem", "array"), DTYPES, ids=IDS)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips_through_tritonclient(
    tmp_path: Path, elem: int, array: np.ndarray, binary: bool
) -> None:
    fn = _function(tmp_path, identity(elem, ["batch", 3]))
    sent = array.astype(object) if array.dtype == object else array
    if array.dtype == object and binary:
        sent = np.array([[s.encode() for s in array[0]]], dtype=object)
    body, length = request_body({"x": sent}, binary)
    result, _ = _round_trip(fn, body, length)
    got = result.as_numpy("y")
    assert got.shape == array.shape
    if array.dtype == object:  # BYTES come back as bytes in binary, as text in JSON
        assert [v.decode() if isinstance(v, bytes) else v for v in got.reshape(-1)] == list(array.reshape(-1))
    else:
        assert got.dtype == array.dtype and got.tolist() == array.tolist()


def test_binary_bytes_are_length_prefixed_little_endian(tmp_path: Path) -> None:
    fn = _function(tmp_path, identity(TensorProto.STRING, ["batch"]))
    header = {
        "inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 11}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    request = protocol.decode_body(
        head + b"\x02\x00\x00\x00hi\x01\x00\x00\x00!", len(head), fn.inputs, "reject", outputs=fn.outputs
    )
    assert request.feeds["x"].tolist() == ["hi", "!"]
    body, length = protocol.encode_body("m", fn.run(request.feeds), fn.outputs, request)
    assert length is not None and body[length:] == b"\x02\x00\x00\x00hi\x01\x00\x00\x00!"
    assert json.loads(body[:length])["outputs"] == [
        {"name": "y", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 11}}
    ]
    assert protocol.response_headers(length) == {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(length),
    }
    assert protocol.response_headers(None) == {"content-type": "application/json"}


def test_binary_data_output_false_per_output_overrides_the_request(tmp_path: Path) -> None:
    fn = _function(tmp_path, multi_io())
    document = {
        "parameters": {"binary_data_output": True},
        "inputs": [
            {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
            {"name": "b", "shape": [1, 2], "datatype": "FP32", "data": [3, 5]},
            {"name": "scale", "shape": [], "datatype": "FP32", "data": [2]},
        ],
        "outputs": [{"name": "diff", "parameters": {"binary_data": False}}, {"name": "sum"}],
    }
    request = protocol.decode_body(json.dumps(document).encode(), None, fn.inputs, "reject", outputs=fn.outputs)
    assert request.wanted == ["diff", "sum"] and request.binary == {"sum"}
    body, length = protocol.encode_body("m", fn.run(request.feeds), fn.outputs, request)
    header = json.loads(body[:length])
    assert header["outputs"][0] == {"name": "diff", "datatype": "FP32", "shape": [1, 2], "data": [-2.0, -3.0]}
    assert np.frombuffer(body[length:], "<f4").tolist() == [8.0, 14.0]


def test_the_json_only_functions_keep_their_signatures(tmp_path: Path) -> None:
    fn = _function(tmp_path, multi_io())
    document = {
        "id": "r-1",
        "inputs": [
            {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
            {"name": "b", "shape": [1, 2], "datatype": "FP32", "data": [3, 5]},
            {"name": "scale", "shape": [], "datatype": "FP32", "data": 2},
        ],
        "outputs": [{"name": "sum"}, {"name": "diff"}],
    }
    feeds, wanted, request_id = protocol.decode_request(document, fn.inputs, "reject")
    assert (wanted, request_id) == (["sum", "diff"], "r-1")
    response = protocol.encode_response("m", fn.run(feeds), fn.outputs, wanted, request_id)
    assert [o["name"] for o in response["outputs"]] == ["sum", "diff"]
    assert response["outputs"][0]["data"] == [8.0, 14.0]


# --- refusals -------------------------------------------------------------------------------

X = {"name": "X", "shape": [1, 30], "datatype": "FP32", "data": [0.5] * 30}


def _decode(document: Any, fn: ModelFunction | None = None) -> protocol.InferRequest:
    fn = fn or _cancer()
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return protocol.decode_body(body, None, fn.inputs, "reject", outputs=fn.outputs)


_CANCER: list[ModelFunction] = []


def _cancer() -> ModelFunction:
    if not _CANCER:
        _CANCER.append(ModelFunction(load_spec(CANCER)))
    return _CANCER[0]


@pytest.mark.parametrize(
    ("shape", "status", "fragment"),
    [
        ([4611686018427387904, 4], 422, "declares more than the 2147483647 elements"),
        ([2**64, 30], 422, "declares more than the 2147483647 elements"),
        ([True, 30], 422, "shape must be a list of non-negative integers"),
        ([-1, 30], 422, "shape must be a list of non-negative integers"),
        ([1.0, 30], 422, "shape must be a list of non-negative integers"),
        ("1x30", 422, "shape must be a list of non-negative integers"),
        ([1] * 33, 422, "shape has 33 axes; at most 32"),
        ([2, 30], 422, "30 values do not fill shape [2, 30]"),
    ],
)
def test_hostile_shapes_are_refused_before_anything_is_allocated(shape: Any, status: int, fragment: str) -> None:
    error = _refused(lambda: _decode({"inputs": [{**X, "shape": shape}]}), status, "input 'X'", fragment)
    assert error.code == "invalid_input"


def test_hostile_binary_shape_is_refused_by_size_not_allocated() -> None:
    fn = _cancer()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "shape": [4611686018427387904, 30],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    ).encode()
    _refused(
        lambda: protocol.decode_body(head + b"\0" * 8, len(head), fn.inputs, "reject", outputs=fn.outputs),
        422,
        "declares more than the 2147483647 elements",
    )


@pytest.mark.parametrize(
    ("document", "status", "fragments"),
    [
        ({"inputs": [X, X]}, 422, ("input 'X' is given more than once",)),
        (
            {"inputs": [X], "outputs": [{"name": "label"}, {"name": "label"}]},
            422,
            ("'label' is asked for more than once",),
        ),
        ({"inputs": [X], "outputs": [{"name": "score"}]}, 422, ("unknown output(s) ['score']", "'probabilities'")),
        ({"inputs": [X], "outputs": "label"}, 422, ("outputs must be a list",)),
        ({"inputs": [{**X, "data": [True] * 30}]}, 422, ("input 'X': true/false given for FP32; send numbers",)),
        ({"inputs": [{**X, "data": [0.5] * 29 + [False]}]}, 422, ("true/false given for FP32",)),
        (
            {"inputs": [X], "parameters": {"binary_data_output": "yes"}},
            422,
            ("binary_data_output must be true or false",),
        ),
        ({"inputs": [X], "parameters": []}, 422, ("parameters must be an object",)),
        ({"inputs": [{**X, "parameters": {"shared_memory_region": "r"}}]}, 422, ("shared memory is not supported",)),
        (
            {"inputs": [{**X, "parameters": {"binary_data_size": 120}}]},
            422,
            ("give data or binary_data_size, not both",),
        ),
        (
            {"inputs": [{k: v for k, v in X.items() if k != "data"} | {"parameters": {"binary_data_size": 120}}]},
            400,
            ("has binary_data_size but the request has no binary part", "Inference-Header-Content-Length"),
        ),
        (
            {"inputs": [{k: v for k, v in X.items() if k != "data"}]},
            422,
            ("needs data, or parameters.binary_data_size",),
        ),
        ({"inputs": [{**X, "name": "Q" * 10_000}]}, 422, ("unknown input 'QQQQ", "…'")),
    ],
)
def test_contradictory_requests_are_refused_naming_the_problem(
    document: Any, status: int, fragments: tuple[str, ...]
) -> None:
    error = _refused(lambda: _decode(document), status, *fragments)
    assert len(json.dumps(error.to_body())) < 600  # a megabyte of name does not come back


def test_numbers_for_a_bool_input_are_refused_as_triton_does(tmp_path: Path) -> None:
    fn = _function(tmp_path, identity(TensorProto.BOOL, ["batch"]))
    tensor = {"name": "x", "shape": [2], "datatype": "BOOL"}
    _refused(lambda: _decode({"inputs": [{**tensor, "data": [1, 0]}]}, fn), 422, "BOOL takes true and false")
    assert _decode({"inputs": [{**tensor, "data": [True, False]}]}, fn).feeds["x"].tolist() == [True, False]


def test_nested_thousand_deep_json_is_a_400_not_a_500() -> None:
    _refused(lambda: _decode(b"[" * 1000 + b"]" * 1000), 400, "JSON nested deeper than 64 levels")
    _refused(lambda: _decode({"inputs": [{**X, "data": json.loads("[" * 60 + "]" * 60)}]}), 422, "input 'X'")


def test_binary_body_without_its_header_length_says_so() -> None:
    fn = _cancer()
    body, length = request_body({"X": np.ones((1, 30), np.float32)}, True)
    assert length is not None
    _refused(
        lambda: protocol.decode_body(body, None, fn.inputs, "reject", outputs=fn.outputs),
        400,
        "Inference-Header-Content-Length header",
    )


@pytest.mark.parametrize(
    ("mutate", "status", "fragment"),
    [
        (lambda body, n: (body, "12x"), 400, "Inference-Header-Content-Length must be the length in bytes"),
        (lambda body, n: (body, len(body) + 1), 400, "Inference-Header-Content-Length must be the length in bytes"),
        (lambda body, n: (body, 0), 400, "Inference-Header-Content-Length must be the length in bytes"),
        (lambda body, n: (body, "²"), 400, "Inference-Header-Content-Length must be the length in bytes"),
        (lambda body, n: (body, "9" * 5000), 400, "Inference-Header-Content-Length must be the length in bytes"),
        (lambda body, n: (body, n - 1), 400, "malformed JSON"),
        (lambda body, n: (body[:-4], n), 400, "binary_data_size is 120 bytes but only 116 bytes"),
        (lambda body, n: (body + b"\0\0\0\0", n), 400, "4 bytes after the JSON header"),
    ],
    ids=[
        "not-a-number",
        "past-the-end",
        "zero",
        "superscript",
        "5000-digits",
        "cuts-the-json",
        "short-data",
        "extra-bytes",
    ],
)
def test_binary_framing_errors_are_400s(mutate: Any, status: int, fragment: str) -> None:
    fn = _cancer()
    body, length = request_body({"X": np.ones((1, 30), np.float32)}, True)
    body, length = mutate(body, length)
    _refused(lambda: protocol.decode_body(body, length, fn.inputs, "reject", outputs=fn.outputs), status, fragment)


def _binary(tensor: dict[str, Any], data: bytes) -> tuple[bytes, int]:
    head = json.dumps({"inputs": [tensor]}).encode()
    return head + data, len(head)


@pytest.mark.parametrize(
    ("elem", "datatype", "shape", "data", "fragment"),
    [
        (TensorProto.FLOAT, "FP32", [1, 3], b"\0" * 8, "binary_data_size is 8 bytes; shape [1, 3] of FP32 takes 12"),
        (TensorProto.FLOAT, "FP32", [1, 3], np.array([1, np.nan, 2], "<f4").tobytes(), "NaN and Infinity"),
        (TensorProto.BOOL, "BOOL", [1, 3], b"\x01\x00\x02", "BOOL bytes must be 0 or 1"),
        (TensorProto.STRING, "BYTES", [1, 3], b"\x01\0\0\0a", "holds 1 of the 3 strings declared"),
        (TensorProto.STRING, "BYTES", [1, 1], b"\xff\0\0\0a", "string 0 runs past the end"),
        (TensorProto.STRING, "BYTES", [1, 1], b"\x01\0\0\0\xff", "string 0 is not UTF-8 text"),
        (TensorProto.STRING, "BYTES", [1, 1], b"\x01\0\0\0ab", "1 bytes left after the 1 strings"),
    ],
)
def test_binary_tensors_that_do_not_fit_are_422s(
    tmp_path: Path, elem: int, datatype: str, shape: list[int], data: bytes, fragment: str
) -> None:
    fn = _function(tmp_path, identity(elem, ["batch", None]))
    tensor = {"name": "x", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": len(data)}}
    body, length = _binary(tensor, data)
    _refused(
        lambda: protocol.decode_body(body, length, fn.inputs, "reject", outputs=fn.outputs), 422, "input 'x'", fragment
    )


def test_binary_floats_obey_the_nan_policy(tmp_path: Path) -> None:
    fn = _function(tmp_path, identity(TensorProto.FLOAT, ["batch"]))
    data = np.array([np.nan, 1.5], "<f4").tobytes()
    body, length = _binary({"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}, data)
    request = protocol.decode_body(body, length, fn.inputs, "allow", outputs=fn.outputs)
    assert math.isnan(request.feeds["x"][0]) and request.feeds["x"][1] == 1.5
    assert request.feeds["x"].flags.writeable and request.feeds["x"].dtype == np.float32
