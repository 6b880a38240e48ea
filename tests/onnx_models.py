"""Small ONNX graphs built with onnx.helper, for tests that need a model of a given shape."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def identity(elem_type: int, shape: list[int | str | None]) -> onnx.ModelProto:
    """y = x, for any element type and shape."""
    x = helper.make_tensor_value_info("x", elem_type, shape)
    y = helper.make_tensor_value_info("y", elem_type, shape)
    return _model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y]))


def multi_io() -> onnx.ModelProto:
    """Two batched inputs and a scalar: sum = (a + b) * scale, and diff = a - b."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 2])
    scale = helper.make_tensor_value_info("scale", TensorProto.FLOAT, [])
    out_sum = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 2])
    out_diff = helper.make_tensor_value_info("diff", TensorProto.FLOAT, ["batch", 2])
    nodes = [
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("Mul", ["ab", "scale"], ["sum"]),
        helper.make_node("Sub", ["a", "b"], ["diff"]),
    ]
    return _model(helper.make_graph(nodes, "multi_io", [a, b, scale], [out_sum, out_diff]))


def row_sum(features: int = 4) -> onnx.ModelProto:
    """total = sum over axis 1 of x [batch, features]: each row's answer depends only on that row."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])
    total = helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0)
    return _model(helper.make_graph([node], "row_sum", [x], [total], initializer=[axes]))


def function_folder(root: Path, name: str, model: onnx.ModelProto, extra_toml: str = "") -> Path:
    """A function folder holding only a model and the two required fields (plus extras)."""
    folder = root / name
    save(model, folder / "model.onnx")
    (folder / "function.toml").write_text(f'name = "{name}"\n{extra_toml}\n[model]\nsource = "model.onnx"\n')
    return folder


def reflect_pad() -> onnx.ModelProto:
    """y = x reflect-padded by one on both sides of axis 1: fine for real rows, but the warm-up's
    synthetic input (dynamic axes of 1) is too short to reflect, so ONNX Runtime refuses it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "m"])
    pads = helper.make_tensor("pads", TensorProto.INT64, [4], [0, 1, 0, 1])
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")
    return _model(helper.make_graph([node], "reflect_pad", [x], [y], initializer=[pads]))
