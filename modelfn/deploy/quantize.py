"""The candidates `modelfn optimize` tries for each step, most aggressive first: the first that
passes the guard and pays is kept.

int8 (dynamic): weights int8 per output channel (per-tensor weights cost MiniLM's embeddings a
mean cosine of 0.96 against 0.99), activations quantised per tensor at run time, only
MatMul/Gemm whose weights are constants, and the embedding tables of Gather. Then the same
with 7-bit weights (`reduce_range`, for CPUs without VNNI, where 8-bit products can saturate),
then with the MatMuls whose outputs move most under quantisation kept in fp32 (ranked by
simulating the quantisation on their recorded inputs), then weight-only int8 (MatMulNBits:
activations stay fp32; smaller, barely faster)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfn.deploy.guard import OptimizeError

if TYPE_CHECKING:
    from modelfn.deploy.optimize import Candidate, Log, Workbench

WEIGHT_OPS = ("MatMul", "Gemm")
SENSITIVE_KEPT = (4, 8)
RANKING_REQUESTS = 40


def candidates(step: str, model: Path, work: Path, bench: Workbench, log: Log) -> Iterator[Candidate]:
    maker = {"int8": _int8, "graph": _graph, "ort": _ort_format, "fp16": _fp16}[step]
    return maker(model, work, bench, log)


def _candidate(step: str, name: str, path: Path, skipped: str = "") -> Candidate:
    from modelfn.deploy.optimize import Candidate

    return Candidate(step, name, path, skipped=skipped)


def _load(model: Path) -> Any:
    import onnx

    if model.suffix == ".ort":
        raise OptimizeError(f"{model.name} is in the ORT format: optimise the .onnx original")
    return onnx.load(str(model))


def weight_nodes(graph: Any) -> list[Any]:
    """MatMul/Gemm nodes whose second input is a float initializer: the ones int8 can rewrite."""
    floats = {i.name for i in graph.initializer if i.data_type == 1 and len(i.dims) == 2}
    return [n for n in graph.node if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in floats]


def embedding_nodes(graph: Any) -> list[Any]:
    floats = {i.name for i in graph.initializer if i.data_type == 1 and len(i.dims) == 2}
    return [n for n in graph.node if n.op_type == "Gather" and n.input[0] in floats]


def _int8(model: Path, work: Path, bench: Workbench, log: Log) -> Iterator[Candidate]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = _load(model)
    nodes = weight_nodes(proto.graph)
    if not nodes:
        ops = sorted({n.op_type for n in proto.graph.node})
        yield _candidate(
            "int8", "dynamic int8", model, skipped=f"no MatMul/Gemm with constant weights (the graph has {ops})"
        )
        return
    ops = ["MatMul", "Gemm"] + (["Gather"] if embedding_nodes(proto.graph) else [])
    what = "+".join(sorted({n.op_type for n in nodes})) + ("+Gather" if "Gather" in ops else "")

    def quantized(name: str, out: str, **options: Any) -> Candidate:
        path = work / out
        quantize_dynamic(
            model,
            path,
            op_types_to_quantize=ops,
            per_channel=True,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
            **options,
        )
        return _candidate("int8", name, path)

    yield quantized(f"dynamic int8 per-channel ({what})", "int8.onnx")
    yield quantized(f"dynamic int8 per-channel 7-bit ({what})", "int8-reduce-range.onnx", reduce_range=True)
    ranking = sensitivity(proto, bench)
    for kept in SENSITIVE_KEPT:
        if kept < len(ranking):
            yield quantized(
                f"dynamic int8 per-channel, {kept} most sensitive fp32",
                f"int8-keep{kept}.onnx",
                nodes_to_exclude=ranking[:kept],
            )
    weight_only = _weight_only(model, work, "Gather" in ops, log)
    if weight_only is not None:
        yield _candidate("int8", f"weight-only int8 (MatMulNBits{'+Gather' if 'Gather' in ops else ''})", weight_only)


def sensitivity(proto: Any, bench: Workbench) -> list[str]:
    """Weight MatMul/Gemm node names, the most hurt by int8 first: their recorded inputs on
    sample requests, multiplied exactly and with both operands quantised as ONNX Runtime
    quantises them (uint8 per tensor, int8 per channel), compared by relative error."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    nodes = [n for n in weight_nodes(proto.graph) if n.name]
    weights = {i.name: i for i in proto.graph.initializer}
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    del probe.graph.output[:]
    inputs = list(dict.fromkeys(n.input[0] for n in nodes))
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in inputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    step = max(1, len(bench.requests) // RANKING_REQUESTS)
    recorded: dict[str, list[np.ndarray]] = {name: [] for name in inputs}
    for feeds in bench.requests[::step]:
        for name, value in zip(inputs, session.run(inputs, feeds), strict=True):
            recorded[name].append(value.reshape(-1, value.shape[-1]).astype(np.float32))
    errors = []
    for node in nodes:
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            w = w.T
        wq = _fake_int8(w)
        num = den = 0.0
        for x in recorded[node.input[0]]:
            if x.shape[-1] != w.shape[0]:
                break
            exact = x @ w
            num += float(((exact - _fake_uint8(x) @ wq) ** 2).sum())
            den += float((exact**2).sum())
        errors.append((np.sqrt(num / den) if den else 0.0, node.name))
    return [name for _, name in sorted(errors, reverse=True)]


def _fake_uint8(x: np.ndarray) -> np.ndarray:
    """DynamicQuantizeLinear and back: asymmetric uint8 over [min(0, x), max(0, x)]."""
    low, high = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (high - low) / 255 or 1.0
    zero = np.clip(np.round(-low / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_int8(w: np.ndarray) -> np.ndarray:
    scale = np.abs(w).max(axis=0, keepdims=True) / 127
    scale[scale == 0] = 1
    return np.clip(np.round(w / scale), -127, 127) * scale


def _weight_only(model: Path, work: Path, gather: bool, log: Log) -> Path | None:
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        log(f"  weight-only int8 not tried: {exc} (pip install onnx-ir)")
        return None
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # accuracy_level 4: int8 products on CPU, blocks of 32 weights sharing a scale
    quantizer = MatMulNBitsQuantizer(onnx.load(str(model)), bits=8, block_size=32, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    path = work / "int8-weight-only.onnx"
    quantizer.model.save_model_to_file(str(path), use_external_data_format=False)
    if gather:
        # the embedding tables as well: Gather supports only 4 bits in MatMulNBits, so int8 the usual way
        quantize_dynamic(path, path, op_types_to_quantize=["Gather"], weight_type=QuantType.QInt8)
    return path


def _graph(model: Path, work: Path, bench: Workbench, log: Log) -> Iterator[Candidate]:
    yield _candidate("graph", "offline graph optimisation (extended)", _save_optimized(model, work / "graph.onnx"))


def _ort_format(model: Path, work: Path, bench: Workbench, log: Log) -> Iterator[Candidate]:
    if model.suffix == ".ort":
        return
    yield _candidate("ort", "ORT format (extended)", _save_optimized(model, work / "model.ort", ort_format=True))


def _save_optimized(model: Path, target: Path, ort_format: bool = False) -> Path:
    """The graph ONNX Runtime's CPU provider makes at the extended level, saved."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    if ort_format:
        options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return target


def _fp16(model: Path, work: Path, bench: Workbench, log: Log) -> Iterator[Candidate]:
    try:
        from onnxconverter_common import float16
    except ImportError:
        yield _candidate("fp16", "fp16", model, skipped="onnxconverter-common is not installed (pip install it)")
        return
    import onnx

    proto = _load(model)
    if not any(i.data_type == 1 and np.prod(i.dims) >= 1024 for i in proto.graph.initializer):
        ml = sorted({n.op_type for n in proto.graph.node if n.domain == "ai.onnx.ml"})
        why = f"its weights live in {', '.join(ml)} (ai.onnx.ml), which has no fp16 form" if ml else "no fp32 weights"
        yield _candidate("fp16", "fp16", model, skipped=why)
        return
    # a Cast to float inside the graph would keep its `to` while its output is declared fp16,
    # and the model would not load: such nodes stay fp32, with casts around them
    casts = [
        n.name
        for n in proto.graph.node
        if n.op_type == "Cast" and any(a.name == "to" and a.i == 1 for a in n.attribute)
    ]
    converted = float16.convert_float_to_float16(proto, keep_io_types=True, node_block_list=casts)
    path = work / "fp16.onnx"
    onnx.save(converted, str(path))
    yield _candidate("fp16", "fp16 weights, inputs and outputs as they were", path)
