"""The Open Inference Protocol (KServe v2 REST) on top of the core: request tensors in,
response tensors out, model metadata, and the binary tensor data extension (Triton's), in
which a body is a JSON header of `Inference-Header-Content-Length` bytes followed by raw
tensor bytes. Pure functions: the HTTP layer passes bytes and headers in and sends what
comes back."""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import numpy as np

from modelfn.codecs import parse_json
from modelfn.errors import BadRequest, InvalidInput
from modelfn.session import OIP_TO_NUMPY, TensorInfo
from modelfn.tensors import coerce, to_json

PROTOCOL_VERSION = "2"
EXTENSIONS = ("binary_tensor_data",)
HEADER_LENGTH = "inference-header-content-length"
"""The request and response header giving the JSON header's length in bytes, when raw tensor bytes follow it."""

MAX_RANK = 32
MAX_ELEMENTS = 2**31 - 1
"""Largest element count one tensor may declare; the data sent must fill it exactly anyway."""


class InferRequest(NamedTuple):
    """One decoded inference request: the graph feeds, the outputs asked for (None: all, in the
    model's order), the request id to echo, and the outputs to answer as raw bytes."""

    feeds: dict[str, np.ndarray]
    wanted: list[str] | None
    request_id: str | None
    binary: frozenset[str] = frozenset()


def model_metadata(
    name: str, inputs: list[TensorInfo], outputs: list[TensorInfo], versions: list[str] | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "versions": versions or ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [i.describe() for i in inputs],
        "outputs": [o.describe() for o in outputs],
    }


# --- requests ---------------------------------------------------------------------------------


def decode_body(
    body: bytes,
    header_length: int | str | None,
    inputs: list[TensorInfo],
    nan_policy: str,
    *,
    outputs: list[TensorInfo],
) -> InferRequest:
    """A raw `/infer` body: all JSON when `header_length` (the `Inference-Header-Content-Length`
    header) is None, else a JSON header of that many bytes and the binary tensor data after it.
    Outputs asked for that the model does not have are refused here, before it runs."""
    length = _header_length(header_length, len(body))
    if length is None:
        try:
            document = parse_json(body)
        except BadRequest as exc:
            if "not UTF-8" not in exc.message and "Extra data" not in exc.message:
                raise
            raise BadRequest(
                f"{exc.message}; a body carrying binary tensor data needs the Inference-Header-Content-Length "
                "header, the length of its JSON part in bytes"
            ) from None
        return _decode(document, None, inputs, outputs, nan_policy)
    document = parse_json(body[:length])
    return _decode(document, memoryview(body)[length:], inputs, outputs, nan_policy)


def decode_request(
    request: Any, inputs: list[TensorInfo], nan_policy: str, outputs: list[TensorInfo] | None = None
) -> tuple[dict[str, np.ndarray], list[str] | None, str | None]:
    """An already-parsed JSON request (no binary data): (feeds, wanted outputs, request id)."""
    decoded = _decode(request, None, inputs, outputs, nan_policy)
    return decoded.feeds, decoded.wanted, decoded.request_id


def _header_length(value: int | str | None, body_size: int) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    if not (text.isascii() and text.isdigit() and len(text) < 20) or not 0 < int(text) <= body_size:
        raise BadRequest(
            f"Inference-Header-Content-Length must be the length in bytes of the body's JSON part, "
            f"between 1 and the body's {body_size} bytes"
        )
    return int(text)


def _decode(
    request: Any,
    binary: memoryview | None,
    inputs: list[TensorInfo],
    outputs: list[TensorInfo] | None,
    nan_policy: str,
) -> InferRequest:
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise InvalidInput('expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    parameters = _parameters(request, "the request")
    by_name = {i.name: i for i in inputs}
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for index, tensor in enumerate(request["inputs"]):
        if not isinstance(tensor, dict) or not {"name", "shape", "datatype"} <= set(tensor):
            raise InvalidInput(f"inputs[{index}]: needs name, shape, datatype and data")
        name, datatype = tensor["name"], tensor["datatype"]
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidInput(f"inputs[{index}]: name and datatype must be strings")
        info = by_name.get(name)
        if info is None:
            raise InvalidInput(f"unknown input {_shown(name)}; the model takes {sorted(by_name)}", input=name[:64])
        if name in feeds:
            raise InvalidInput(f"input {name!r} is given more than once; send each input once", input=name)
        if datatype != info.datatype:
            raise InvalidInput(
                f"input {name!r}: datatype {_shown(datatype)} given, the model takes {info.datatype}", input=name
            )
        if datatype not in OIP_TO_NUMPY:
            raise InvalidInput(f"input {name!r}: unsupported datatype {datatype!r}", input=name)
        shape, count = _shape(tensor["shape"], name)
        size = _binary_size(tensor, name)
        if size is None:
            feeds[name] = _from_json(tensor, info, shape, count, nan_policy)
            continue
        if binary is None:
            raise BadRequest(
                f"input {name!r} has binary_data_size but the request has no binary part: send the "
                "Inference-Header-Content-Length header, the length of the body's JSON part in bytes"
            )
        if size > len(binary) - offset:
            raise BadRequest(
                f"input {name!r}: binary_data_size is {size} bytes but only {len(binary) - offset} bytes of "
                "binary data are left in the body",
                input=name,
            )
        feeds[name] = coerce(_from_bytes(binary[offset : offset + size], info, shape, count), info, nan_policy)
        offset += size
    if binary is not None and offset != len(binary):
        raise BadRequest(
            f"the body holds {len(binary) - offset} bytes after the JSON header that no input's binary_data_size "
            "accounts for"
        )
    missing = sorted(set(by_name) - set(feeds))
    if missing:
        raise InvalidInput(f"missing input(s) {missing}", inputs=missing)
    wanted, binary_outputs = _requested_outputs(request, parameters, outputs)
    request_id = request.get("id")
    return InferRequest(feeds, wanted, str(request_id) if request_id is not None else None, binary_outputs)


def _shown(value: str, limit: int = 64) -> str:
    """A client's name in a message, cut short: a megabyte of name would come back in the answer."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _parameters(holder: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{what}: parameters must be an object")
    if any(str(key).startswith("shared_memory_") for key in parameters):
        raise InvalidInput(f"{what}: shared memory is not supported here; send the data in the body")
    return parameters


def _shape(shape: Any, name: str) -> tuple[list[int], int]:
    """The shape and its element count, checked as Python ints before anything is allocated."""
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers", input=name)
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"input {name!r}: shape has {len(shape)} axes; at most {MAX_RANK} are taken", input=name)
    if any(d > MAX_ELEMENTS for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise InvalidInput(
            f"input {name!r}: shape {shape} declares more than the {MAX_ELEMENTS} elements a tensor may hold",
            input=name,
        )
    return shape, math.prod(shape)


def _binary_size(tensor: dict[str, Any], name: str) -> int | None:
    parameters = _parameters(tensor, f"input {name!r}")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise InvalidInput(f"input {name!r}: needs data, or parameters.binary_data_size for binary data")
        return None
    if type(size) is not int or size < 0:
        raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer", input=name)
    if "data" in tensor:
        raise InvalidInput(f"input {name!r}: give data or binary_data_size, not both", input=name)
    return size


def _from_json(tensor: dict[str, Any], info: TensorInfo, shape: list[int], count: int, nan_policy: str) -> np.ndarray:
    name, data = info.name, tensor["data"]
    try:
        flat = np.asarray(data, dtype=object).reshape(-1)
    except ValueError:
        raise InvalidInput(f"input {name!r}: data must be a flat or nested list of values", input=name) from None
    if flat.size != count:
        raise InvalidInput(f"input {name!r}: {flat.size} values do not fill shape {shape}", input=name)
    kinds = set(map(type, flat.tolist()))
    if info.datatype == "BOOL" and kinds - {bool}:
        raise InvalidInput(f"input {name!r}: BOOL takes true and false, not numbers or strings", input=name)
    if info.datatype not in ("BOOL", "BYTES") and bool in kinds:
        raise InvalidInput(f"input {name!r}: true/false given for {info.datatype}; send numbers", input=name)
    # through lists so integers are checked exactly (see tensors.coerce)
    return coerce(flat.reshape(shape).tolist(), info, nan_policy)


def _from_bytes(raw: memoryview, info: TensorInfo, shape: list[int], count: int) -> np.ndarray:
    """Binary tensor data: little-endian, row-major; BOOL one byte each; BYTES each element a
    4-byte little-endian length and that many bytes."""
    name = info.name
    if info.datatype == "BYTES":
        return np.asarray(_strings(raw, name, count), dtype=object).reshape(shape)
    dtype = np.dtype(OIP_TO_NUMPY[info.datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: binary_data_size is {len(raw)} bytes; shape {shape} of {info.datatype} takes "
            f"{count * dtype.itemsize}",
            input=name,
        )
    if info.datatype == "BOOL":
        octets = np.frombuffer(raw, dtype=np.uint8)
        if octets.size and octets.max() > 1:
            raise InvalidInput(f"input {name!r}: BOOL bytes must be 0 or 1", input=name)
        return octets.astype(np.bool_).reshape(shape)
    # a copy: aligned, writable and in the machine's byte order, whatever the body's buffer is
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _strings(raw: memoryview, name: str, count: int) -> list[str]:
    values, offset = [], 0
    for index in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: binary data holds {index} of the {count} strings declared", input=name)
        size = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(raw):
            raise InvalidInput(f"input {name!r}: string {index} runs past the end of its binary data", input=name)
        try:
            values.append(bytes(raw[offset : offset + size]).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input {name!r}: string {index} is not UTF-8 text", input=name) from None
        offset += size
    if offset != len(raw):
        raise InvalidInput(
            f"input {name!r}: {len(raw) - offset} bytes left after the {count} strings shape declares", input=name
        )
    return values


def _requested_outputs(
    request: dict[str, Any], parameters: dict[str, Any], infos: list[TensorInfo] | None
) -> tuple[list[str] | None, frozenset[str]]:
    everything_binary = parameters.get("binary_data_output", False)
    if not isinstance(everything_binary, bool):
        raise InvalidInput("parameters.binary_data_output must be true or false")
    requested = request.get("outputs")
    if requested is None:
        return None, frozenset(o.name for o in infos or [] if everything_binary)
    if not isinstance(requested, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
    ):
        raise InvalidInput('outputs must be a list of {"name": "<output>"} objects')
    wanted: list[str] = []
    seen: set[str] = set()
    binary: set[str] = set()
    for output in requested:
        name = output["name"]
        if name in seen:
            raise InvalidInput(f"output {_shown(name)} is asked for more than once", output=name)
        seen.add(name)
        as_binary = _parameters(output, f"output {_shown(name)}").get("binary_data", everything_binary)
        if not isinstance(as_binary, bool):
            raise InvalidInput(f"output {_shown(name)}: parameters.binary_data must be true or false", output=name)
        wanted.append(name)
        if as_binary:
            binary.add(name)
    if infos is not None:
        _check_known(wanted, [o.name for o in infos])
    return wanted, frozenset(binary)


def _check_known(wanted: list[str], names: list[str]) -> None:
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise InvalidInput(f"unknown output(s) {[_shown(u)[1:-1] for u in unknown]}; the model has {sorted(names)}")


# --- responses --------------------------------------------------------------------------------


def encode_response(
    name: str,
    outputs: dict[str, np.ndarray],
    infos: list[TensorInfo],
    wanted: list[str] | None,
    request_id: str | None,
    version: str = "1",
) -> dict[str, Any]:
    """The JSON response: every output's data inline (the requested ones, in the order asked)."""
    body, _ = _response(name, outputs, infos, InferRequest({}, wanted, request_id), version)
    return body


def encode_body(
    name: str, outputs: dict[str, np.ndarray], infos: list[TensorInfo], request: InferRequest, version: str = "1"
) -> tuple[bytes, int | None]:
    """The response body, and the `Inference-Header-Content-Length` to send with it: None when the
    body is all JSON, else the JSON header's length, the binary outputs' bytes following it."""
    body, raw = _response(name, outputs, infos, request, version)
    header = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    if not raw:
        return header, None
    return b"".join([header, *raw]), len(header)


def response_headers(header_length: int | None) -> dict[str, str]:
    """The content type (and header length) for a body from `encode_body`."""
    if header_length is None:
        return {"content-type": "application/json"}
    return {"content-type": "application/octet-stream", HEADER_LENGTH: str(header_length)}


def _response(
    name: str, outputs: dict[str, np.ndarray], infos: list[TensorInfo], request: InferRequest, version: str = "1"
) -> tuple[dict[str, Any], list[bytes]]:
    types = {o.name: o.datatype for o in infos}
    if request.wanted is not None:
        _check_known(request.wanted, list(outputs))
    body: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": []}
    if request.request_id is not None:
        body["id"] = request.request_id
    raw: list[bytes] = []
    for out_name in request.wanted if request.wanted is not None else list(outputs):
        array = np.asarray(outputs[out_name])
        datatype = types.get(out_name, "FP32")
        tensor: dict[str, Any] = {"name": out_name, "datatype": datatype, "shape": list(array.shape)}
        if out_name in request.binary and datatype in OIP_TO_NUMPY:  # a sequence or map has no binary form
            data = _to_bytes(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            tensor["data"] = to_json(array.reshape(-1))
        body["outputs"].append(tensor)
    return body, raw


def _to_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in array.reshape(-1).tolist():
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts += [len(data).to_bytes(4, "little"), data]
        return b"".join(parts)
    dtype = np.dtype(OIP_TO_NUMPY[datatype]).newbyteorder("<")
    return np.ascontiguousarray(array, dtype=dtype).tobytes()
