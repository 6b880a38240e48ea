"""tritonclient as the Open Inference Protocol client: request bodies and parsed answers built
by its own code (no server needed), and a check of a running server against ONNX Runtime."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as triton

DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.bool_): "BOOL",
    np.dtype(object): "BYTES",
}


def triton_inputs(feeds: Mapping[str, np.ndarray], binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name, array in feeds.items():
        tensor = triton.InferInput(name, list(array.shape), DATATYPES[array.dtype])
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def triton_outputs(names: list[str] | None, binary: bool) -> list[triton.InferRequestedOutput] | None:
    """None asks for every output, which tritonclient asks for in binary (`binary_data_output`)."""
    return None if names is None else [triton.InferRequestedOutput(n, binary_data=binary) for n in names]


def request_body(
    feeds: Mapping[str, np.ndarray],
    binary: bool,
    outputs: list[str] | None = None,
    binary_outputs: bool = True,
    **kw: Any,
) -> tuple[bytes, int | None]:
    """The body and `Inference-Header-Content-Length` tritonclient would send."""
    body, length = triton.InferenceServerClient.generate_request_body(
        triton_inputs(feeds, binary), outputs=triton_outputs(outputs, binary_outputs), **kw
    )
    return (body.encode() if isinstance(body, str) else body), length


def parse_response(body: bytes, header_length: int | None) -> triton.InferResult:
    return triton.InferenceServerClient.parse_response_body(body, header_length=header_length)


def onnxruntime_outputs(model: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model run by ONNX Runtime directly: what every answer is compared with."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def check_live_server(base_url: str, function: str, model: Path, feeds: Mapping[str, np.ndarray]) -> None:
    """tritonclient against a running server (`base_url`, e.g. `http://127.0.0.1:8080`), in binary
    and JSON modes, every output and one at a time: each answer equals ONNX Runtime's own."""
    expected = onnxruntime_outputs(model, feeds)
    client = triton.InferenceServerClient(url=base_url.removeprefix("http://").removeprefix("https://"))
    try:
        assert client.is_server_ready() and client.is_model_ready(function)
        for binary in (True, False):
            result = client.infer(function, triton_inputs(feeds, binary))
            for name, value in expected.items():
                np.testing.assert_allclose(result.as_numpy(name), value, rtol=1e-6)
            for name, value in expected.items():
                one = client.infer(function, triton_inputs(feeds, binary), outputs=triton_outputs([name], binary))
                assert [o["name"] for o in one.get_response()["outputs"]] == [name]
                np.testing.assert_allclose(one.as_numpy(name), value, rtol=1e-6)
    finally:
        client.close()
