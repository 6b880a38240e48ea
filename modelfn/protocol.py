"""The Open Inference Protocol (KServe v2 REST) on top of the core: request tensors in,
response tensors out, model metadata."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelfn.errors import InvalidInput
from modelfn.session import OIP_TO_NUMPY, TensorInfo
from modelfn.tensors import coerce, to_json

PROTOCOL_VERSION = "2"


def model_metadata(name: str, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> dict[str, Any]:
    return {
        "name": name,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [i.describe() for i in inputs],
        "outputs": [o.describe() for o in outputs],
    }


def decode_request(
    request: Any, inputs: list[TensorInfo], nan_policy: str
) -> tuple[dict[str, np.ndarray], list[str] | None, str | None]:
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise InvalidInput('expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    by_name = {i.name: i for i in inputs}
    feeds: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request["inputs"]):
        if not isinstance(tensor, dict) or not {"name", "shape", "datatype", "data"} <= set(tensor):
            raise InvalidInput(f"inputs[{index}]: needs name, shape, datatype and data")
        name, shape, datatype = tensor["name"], tensor["shape"], tensor["datatype"]
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidInput(f"inputs[{index}]: name and datatype must be strings")
        info = by_name.get(name)
        if info is None:
            raise InvalidInput(f"unknown input {name!r}; the model takes {sorted(by_name)}", input=name)
        if datatype != info.datatype:
            raise InvalidInput(
                f"input {name!r}: datatype {datatype!r} given, the model takes {info.datatype}", input=name
            )
        if datatype not in OIP_TO_NUMPY:
            raise InvalidInput(f"input {name!r}: unsupported datatype {datatype!r}", input=name)
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers", input=name)
        try:
            flat = np.asarray(tensor["data"], dtype=object).reshape(-1)
        except ValueError:
            raise InvalidInput(f"input {name!r}: data must be a flat or nested list of values", input=name) from None
        if flat.size != int(np.prod(shape)):
            raise InvalidInput(f"input {name!r}: {flat.size} values do not fill shape {shape}", input=name)
        # through lists so integers are checked exactly (see tensors.coerce)
        feeds[name] = coerce(flat.reshape(shape).tolist(), info, nan_policy)
    missing = sorted(set(by_name) - set(feeds))
    if missing:
        raise InvalidInput(f"missing input(s) {missing}", inputs=missing)
    wanted = None
    if isinstance(request.get("outputs"), list):
        wanted = [str(o.get("name")) for o in request["outputs"] if isinstance(o, dict)]
    request_id = request.get("id")
    return feeds, wanted, str(request_id) if request_id is not None else None


def encode_response(
    name: str, outputs: dict[str, np.ndarray], infos: list[TensorInfo], wanted: list[str] | None, request_id: str | None
) -> dict[str, Any]:
    types = {o.name: o.datatype for o in infos}
    if wanted:
        unknown = sorted(set(wanted) - set(outputs))
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; the model has {sorted(outputs)}")
    body: dict[str, Any] = {"model_name": name, "model_version": "1", "outputs": []}
    if request_id is not None:
        body["id"] = request_id
    for out_name, value in outputs.items():
        if wanted and out_name not in wanted:
            continue
        array = np.asarray(value)
        body["outputs"].append(
            {
                "name": out_name,
                "datatype": types.get(out_name, "FP32"),
                "shape": list(array.shape),
                "data": to_json(array.reshape(-1)),
            }
        )
    return body
