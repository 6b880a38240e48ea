"""Codecs and the Open Inference Protocol against real ONNX Runtime sessions of models
built here: every dtype, several inputs and outputs, scalars, dynamic axes, bad input."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto
from onnx_models import function_folder, identity, multi_io

from modelfn.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType, error_body
from modelfn.function import ModelFunction
from modelfn.session import TensorInfo
from modelfn.spec import load_spec
from modelfn.tensors import coerce

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"

DTYPES = [
    (TensorProto.FLOAT, np.float32, "FP32", [[1.5, -2.25, 3.0]]),
    (TensorProto.DOUBLE, np.float64, "FP64", [[1e-300, 2.5, -1e300]]),
    (TensorProto.FLOAT16, np.float16, "FP16", [[0.5, -1.0, 2048.0]]),
    (TensorProto.INT8, np.int8, "INT8", [[-128, 0, 127]]),
    (TensorProto.INT16, np.int16, "INT16", [[-32768, 1, 32767]]),
    (TensorProto.INT32, np.int32, "INT32", [[-(2**31), 7, 2**31 - 1]]),
    (TensorProto.INT64, np.int64, "INT64", [[-(2**63), 9, 2**63 - 1]]),
    (TensorProto.UINT8, np.uint8, "UINT8", [[0, 128, 255]]),
    (TensorProto.UINT16, np.uint16, "UINT16", [[0, 1, 65535]]),
    (TensorProto.UINT32, np.uint32, "UINT32", [[0, 1, 2**32 - 1]]),
    (TensorProto.UINT64, np.uint64, "UINT64", [[0, 1, 2**64 - 1]]),
    (TensorProto.BOOL, np.bool_, "BOOL", [[True, False, True]]),
    (TensorProto.STRING, np.object_, "BYTES", [["a", "b c", "ü"]]),
]


def _function(tmp_path: Path, model, toml: str = "") -> ModelFunction:
    return ModelFunction(load_spec(function_folder(tmp_path, "m", model, toml)))


@pytest.mark.parametrize(("elem", "dtype", "datatype", "value"), DTYPES, ids=[d[2] for d in DTYPES])
def test_every_dtype_round_trips_through_the_tensor_codec_and_v2(tmp_path, elem, dtype, datatype, value) -> None:
    fn = _function(tmp_path, identity(elem, ["batch", 3]))
    assert fn.metadata()["inputs"] == [{"name": "x", "datatype": datatype, "shape": [-1, 3]}]
    assert fn.predict(payload={"x": value}) == {"y": value}
    response = fn.infer_v2({"inputs": [{"name": "x", "shape": [1, 3], "datatype": datatype, "data": value[0]}]})
    assert response["outputs"] == [{"name": "y", "datatype": datatype, "shape": [1, 3], "data": value[0]}]


def test_several_inputs_scalar_and_several_outputs(tmp_path: Path) -> None:
    fn = _function(tmp_path, multi_io())
    out = fn.predict(payload={"inputs": {"a": [[1, 2], [3, 4]], "b": [[10, 20], [30, 40]], "scale": 0.5}})
    assert out == {"sum": [[5.5, 11.0], [16.5, 22.0]], "diff": [[-9.0, -18.0], [-27.0, -36.0]]}


def test_single_item_gets_and_loses_a_batch_axis(tmp_path: Path) -> None:
    fn = _function(tmp_path, identity(TensorProto.FLOAT, ["batch", 3]))
    assert fn.predict(payload={"x": [1, 2, 3]}) == {"y": [1.0, 2.0, 3.0]}
    assert fn.predict(payload=[[1, 2, 3], [4, 5, 6]]) == {"y": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}


def test_a_functions_tensors_are_read_from_the_graph_as_values(tmp_path: Path) -> None:
    from modelfn.session import TensorInfo

    fn = _function(tmp_path, identity(TensorProto.FLOAT, ["batch", 3]))
    (x,) = fn.inputs
    assert x == TensorInfo("x", "tensor(float)", (None, 3)) and x != TensorInfo("x", "tensor(float)", (1, 3))
    assert len({x, TensorInfo("x", "tensor(float)", (None, 3))}) == 1
    assert repr(x) == "TensorInfo(name='x', type='tensor(float)', shape=(None, 3))"
    assert (x.dtype, x.datatype, x.batched, x.fixed_axes) == (np.float32, "FP32", True, ((1, 3),))


def test_fully_dynamic_axes(tmp_path: Path) -> None:
    fn = _function(tmp_path, identity(TensorProto.INT64, [None, None, None]))
    value = np.arange(24).reshape(2, 3, 4).tolist()
    assert fn.predict(payload={"x": value}) == {"y": value}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"z": [[1, 2, 3]]}, "unknown input(s) ['z']"),
        ({}, "missing input(s) ['x']"),
        ({"x": [["a", "b", "c"]]}, "expected numbers"),
        ({"x": [[1, 2]]}, "axis 1 must be 3"),
        ({"x": [[[1, 2, 3]]]}, "expected rank 2"),
        ({"x": [[1, 2, float("nan")]]}, "NaN and Infinity are not accepted"),
        ({"x": [[1, [2], 3]]}, "ragged"),
        ({"x": [[1e39, 0, 0]]}, "overflow float32"),
    ],
)
def test_bad_float_input_is_refused_naming_the_input(tmp_path: Path, payload: dict, message: str) -> None:
    fn = _function(tmp_path, identity(TensorProto.FLOAT, ["batch", 3]))
    with pytest.raises(InvalidInput) as caught:
        fn.predict(payload=payload)
    assert message in caught.value.message
    assert error_body(caught.value)[0] == 422


@pytest.mark.parametrize(
    ("value", "message"),
    [([[1.5, 0, 0]], "got fractions"), ([[300, 0, 0]], "out of range for int8"), ([[True, 0, 1]], "")],
)
def test_integer_inputs_refuse_fractions_and_overflow(tmp_path: Path, value: list, message: str) -> None:
    fn = _function(tmp_path, identity(TensorProto.INT8, ["batch", 3]))
    if not message:
        assert fn.predict(payload={"x": value}) == {"y": [[1, 0, 1]]}
        return
    with pytest.raises(InvalidInput, match=message):
        fn.predict(payload={"x": value})


@pytest.mark.parametrize(
    ("array", "want", "message"),
    [
        (np.array([[7, -3, 2**40]], dtype=np.int64), "tensor(int64)", ""),  # a hook's ids: taken as they are
        (np.array([[1, 2, 300]], dtype=np.int32), "tensor(int8)", "out of range for int8"),
        (np.array([[1, 2, 3]], dtype=np.int32), "tensor(int64)", ""),
        (np.array([[1.0, 2.5, 3.0]]), "tensor(int64)", "got fractions"),
    ],
)
def test_integer_arrays_are_checked_unless_already_the_inputs_type(array: np.ndarray, want: str, message: str) -> None:
    info = TensorInfo("ids", want, (None, 3))
    if message:
        with pytest.raises(InvalidInput, match=message):
            coerce(array, info)
        return
    coerced = coerce(array, info)
    assert coerced.dtype == info.dtype
    np.testing.assert_array_equal(coerced, array)


def test_nan_allowed_when_the_spec_says_so(tmp_path: Path) -> None:
    fn = _function(tmp_path, identity(TensorProto.FLOAT, ["batch", 3]), "[io]\nnan_policy = 'allow'")
    assert fn.predict(body=b'{"x": [[NaN, 1, 2]]}') == {"y": [[None, 1.0, 2.0]]}


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"{oops", "application/json", BadRequest),
        (b"", "application/json", BadRequest),
        (b"1,2,3", "text/csv", UnsupportedMediaType),
    ],
)
def test_body_parsing_errors(tmp_path: Path, body: bytes, content_type: str, error: type) -> None:
    fn = _function(tmp_path, identity(TensorProto.FLOAT, ["batch", 3]))
    with pytest.raises(error):
        fn.predict(body=body, content_type=content_type)


def test_v2_request_errors_name_the_problem(tmp_path: Path) -> None:
    fn = _function(tmp_path, identity(TensorProto.FLOAT, ["batch", 3]))
    cases = [
        ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}]}, "the model takes FP32"),
        ({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, "do not fill shape"),
        ({"inputs": [{"name": "q", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, "unknown input 'q'"),
        ({"inputs": "x"}, 'expected {"inputs"'),
    ]
    for request, message in cases:
        with pytest.raises(InvalidInput, match=message):
            fn.infer_v2(request)


def test_v2_selects_outputs_and_echoes_the_id(tmp_path: Path) -> None:
    fn = _function(tmp_path, multi_io())
    request = {
        "id": "r-1",
        "inputs": [
            {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
            {"name": "b", "shape": [1, 2], "datatype": "FP32", "data": [3, 5]},
            {"name": "scale", "shape": [], "datatype": "FP32", "data": 2},
        ],
        "outputs": [{"name": "diff"}],
    }
    assert fn.infer_v2(request) == {
        "model_name": "m",
        "model_version": "1",
        "id": "r-1",
        "outputs": [{"name": "diff", "datatype": "FP32", "shape": [1, 2], "data": [-2.0, -3.0]}],
    }


def test_records_codec_maps_columns_in_declared_order(tmp_path: Path) -> None:
    toml = "[io]\ncodec = 'records'\ncolumns = ['c', 'a', 'b']"
    fn = _function(tmp_path, identity(TensorProto.FLOAT, ["batch", 3]), toml)
    assert fn.predict(payload={"a": 1, "b": 2, "c": 3}) == {"y": [3.0, 1.0, 2.0]}
    assert fn.predict(payload=[{"a": 1, "b": 2, "c": 3}, {"a": 4, "b": 5, "c": 6}]) == {
        "y": [[3.0, 1.0, 2.0], [6.0, 4.0, 5.0]]
    }
    with pytest.raises(InvalidInput, match="record 1: missing c; unknown d"):
        fn.predict(payload=[{"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 2, "d": 3}])


def _digit_png(index: int) -> tuple[bytes, int]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (255 - digits.images[index] * 255 / 16).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, "PNG")
    return buffer.getvalue(), int(digits.target[index])


def test_image_codec_reads_png_bytes_and_base64() -> None:
    fn = ModelFunction(load_spec(FUNCTIONS / "digits"))
    for index in (0, 7, 23, 42):
        png, digit = _digit_png(index)
        assert fn.predict(body=png, content_type="image/png")["label"] == digit
        out = fn.predict(body=json.dumps({"image": base64.b64encode(png).decode()}).encode())
        assert out["label"] == digit and abs(sum(out["probabilities"]) - 1) < 1e-4
    batch = fn.predict(payload={"images": [base64.b64encode(_digit_png(i)[0]).decode() for i in (1, 2)]})
    assert batch["label"] == [_digit_png(1)[1], _digit_png(2)[1]]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"\x89PNG\r\n\x1a\nbroken", "image/png", "could not be decoded"),
        (b'{"image": "not base64!"}', "application/json", "invalid base64"),
        (b'{"image": "aGVsbG8="}', "application/json", "could not be decoded"),
    ],
)
def test_corrupt_images_are_bad_requests(body: bytes, content_type: str, message: str) -> None:
    fn = ModelFunction(load_spec(FUNCTIONS / "digits"))
    with pytest.raises(BadRequest, match=message):
        fn.predict(body=body, content_type=content_type)


def test_hooks_run_before_and_after_the_model(tmp_path: Path) -> None:
    folder = function_folder(
        tmp_path,
        "hooked",
        identity(TensorProto.FLOAT, ["batch", 3]),
        "[hooks]\npreprocess = 'hooks:pre'\npostprocess = 'hooks:post'",
    )
    (folder / "hooks.py").write_text(
        "def pre(payload):\n    return {'x': [payload['a'], payload['b'], payload['c']]}\n\n"
        "def post(outputs):\n    return {'total': float(outputs['y'].sum())}\n"
    )
    fn = ModelFunction(load_spec(folder))
    assert fn.predict(payload={"a": 1, "b": 2, "c": 4}) == {"total": 7.0}
    with pytest.raises(InvalidInput, match="pre refused the input"):
        fn.predict(payload={"a": 1})


# --- hostile bodies: a 4xx naming the problem, never a 500 or a hang ----------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 1000 + b"]" * 1000, "JSON nested deeper than 64 levels of arrays and objects"),
        (b'{"X": ' + b"[" * 65 + b"]" * 65 + b"}", "JSON nested deeper than 64 levels"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "JSON nested deeper than 64 levels"),
        (b"1" * 5000, "malformed JSON: Exceeds the limit (4300 digits)"),
        (b'{"X": [\x80]}', "malformed JSON: the body is not UTF-8 text (byte 7 cannot be decoded)"),
        (b" \r\n\t\x0b\x0c ", "empty body: send a JSON document"),
    ],
    ids=["arrays-1000", "arrays-65", "objects-100000", "long-integer", "not-utf8", "whitespace-only"],
)
def test_hostile_json_is_a_400_naming_the_problem(body: bytes, message: str) -> None:
    fn = ModelFunction(load_spec(FUNCTIONS / "breast-cancer"))
    with pytest.raises(BadRequest) as caught:
        fn.predict(body=body)
    assert message in caught.value.message
    assert error_body(caught.value) == (400, {"error": caught.value.message, "code": "bad_request"})


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    from modelfn.codecs import nested_deeper_than, parse_json

    assert parse_json(b'{"text": "' + b"[" * 5000 + b'"}') == {"text": "[" * 5000}
    assert parse_json('["\\"[[[[", ' + "[" * 63 + "]" * 63 + "]") == ['"[[[[', json.loads("[" * 63 + "]" * 63)]
    assert not nested_deeper_than(b"[" + b"[1, 2], " * 100_000 + b"[3]]", 2)
    assert nested_deeper_than(b"[" + b"[1, 2], " * 100_000 + b"[[3]]]", 2)


def _png_header(width: int, height: int) -> bytes:
    """A PNG of a signature and an IHDR chunk declaring `width` x `height`, and no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (20000, 20000, "the image declares more than 179.0 megapixels; this function decodes at most 40.0 megapixels"),
        (13300, 13300, "the image is 13300x13300 (176.9 megapixels); this function decodes at most 40.0 megapixels"),
        (7000, 7000, "the image is 7000x7000 (49.0 megapixels); this function decodes at most 40.0 megapixels"),
    ],
)
def test_image_pixel_count_is_checked_from_the_header(width: int, height: int, message: str) -> None:
    body = _png_header(width, height)
    assert len(body) == 45
    fn = ModelFunction(load_spec(FUNCTIONS / "digits"))
    for send in (
        lambda: fn.predict(body=body, content_type="image/png"),
        lambda: fn.predict(payload={"image": base64.b64encode(body).decode()}),
    ):
        with pytest.raises(PayloadTooLarge) as caught:
            send()
        assert message in caught.value.message and "(io.image.max_pixels)" in caught.value.message
        assert error_body(caught.value)[0] == 413


def test_a_real_one_colour_13300_square_png_is_refused_without_decoding() -> None:
    import resource
    import time

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (13300, 13300), 255).save(buffer, "PNG")
    body = buffer.getvalue()
    fn = ModelFunction(load_spec(FUNCTIONS / "digits"))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge, match="13300x13300"):
        fn.predict(body=body, content_type="image/png")
    assert time.perf_counter() - started < 1.0
    # decoding it would take 177 MB for its pixels alone; the peak may not grow by a tenth of that
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 16 * 1024


def test_the_pixel_limit_counts_every_image_of_a_request_and_is_configurable(tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "digits"
    shutil.copytree(FUNCTIONS / "digits", folder)
    spec_text = (folder / "function.toml").read_text()
    (folder / "function.toml").write_text(spec_text.replace("[io.image]", "[io.image]\nmax_pixels = 100"))
    fn = ModelFunction(load_spec(folder))
    png, digit = _digit_png(3)  # 8 x 8 = 64 pixels
    assert fn.predict(body=png, content_type="image/png")["label"] == digit
    two = {"images": [base64.b64encode(png).decode()] * 2}
    with pytest.raises(PayloadTooLarge) as caught:
        fn.predict(payload=two)
    assert caught.value.message == (
        "the 2 images hold 128 pixels together; this function decodes at most 100 pixels per request "
        "(io.image.max_pixels)"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"II*\x00\x08\x00\x00\x00" + b"\x00" * 16, "not a PNG, JPEG, GIF, BMP or WebP image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not a PNG, JPEG, GIF, BMP or WebP image"),
    ],
    ids=["tiff", "eps"],
)
def test_image_formats_beyond_the_listed_ones_are_not_opened(body: bytes, message: str) -> None:
    fn = ModelFunction(load_spec(FUNCTIONS / "digits"))
    with pytest.raises(BadRequest, match=message):
        fn.predict(body=body, content_type="image/png")


ROWS = [
    [1.5, 2, True],
    [0.1, -2.5e-8, 3],
    [False, True, False],
    [1e39, 0, 0],  # past float32 and float16, not float64
    [70000.0, 1, 2],  # past float16 only
    [3.4028234663852886e38, -3.4028234663852886e38, 0],  # float32's largest
    [float("nan"), 1, 2],
    [float("inf"), 1, 2],
    [1.7e308, 1.7e308, 0],  # finite values whose sum is not
    [10**400, 1, 2],
    [10**20, 1, 2],
    [2**60 + 1, 1, 2],  # exact as int64, not as a float: rounded once either way
    [1e30, -1e30, 65504.0],
    ["a", 1, 2],
    ["1.5", 1, 2],
    [None, 1, 2],
    [1, [2], 3],
    [{"a": 1}, 2, 3],
]


@pytest.mark.parametrize("dtype", ["tensor(float16)", "tensor(float)", "tensor(double)"])
@pytest.mark.parametrize("policy", ["reject", "allow"])
def test_one_row_of_numbers_is_taken_as_the_general_path_takes_it(
    dtype: str, policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flat list of numbers is checked and cast in one step; anything else is left to the
    general path, so both give the same array or the same refusal for every row."""
    import modelfn.tensors as tensors

    info = TensorInfo("x", dtype, (None, 3))

    def outcome(row: list) -> tuple[str, object]:
        try:
            array, single = tensors.coerce_item(row, info, policy)
        except InvalidInput as exc:
            return "refused", exc.message
        return str(array.dtype), (array.tobytes(), array.shape, single)

    fast = [outcome(row) for row in ROWS]
    monkeypatch.setattr(tensors, "_finite_row", lambda values, want: None)
    assert fast == [outcome(row) for row in ROWS]
    assert fast[0][0] == str(info.dtype) and fast[13][0] == "refused"


def test_a_single_items_answer_is_the_first_item_of_each_output() -> None:
    from modelfn.tensors import to_json

    assert to_json(np.array([7, 8], dtype=np.int64), first=True) == 7
    assert to_json(np.array([[b"yes", b"no"]], dtype=object), first=True) == ["yes", "no"]
    assert to_json(np.array([[[1.5, np.nan]]], dtype=np.float32), first=True) == [[1.5, None]]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 2, 64, 65, 1000])
def test_finiteness_is_told_alike_for_small_and_large_arrays(dtype: type, size: int) -> None:
    """Also for the first item of a batch, as a single item's answer is made."""
    from modelfn.tensors import all_finite, to_json

    largest = float(np.finfo(dtype).max)
    for bad in (None, float("nan"), float("inf"), -float("inf")):
        values = np.full(size, largest, dtype=dtype)  # finite values whose sum overflows their own type
        if bad is not None:
            values[size // 2] = bad
        for array in (values, values.reshape(1, -1)):
            assert all_finite(array) is (bad is None)
            expected = [None if not np.isfinite(v) else float(v) for v in values.tolist()]
            assert to_json(array) == (expected if array.ndim == 1 else [expected])
            assert to_json(array, first=True) == (expected[0] if array.ndim == 1 else expected)
    assert to_json(np.array(largest, dtype=dtype)) == largest
    assert to_json(np.array(largest, dtype=dtype), first=True) == largest  # no axis to take an item from
    assert to_json(np.array(float("nan"), dtype=dtype)) is None
