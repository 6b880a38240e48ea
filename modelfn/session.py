"""ONNX Runtime sessions: providers from the spec, thread settings, graph optimisation,
and a warm-up run on an input synthesised from the graph's own metadata."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfn.errors import ModelUnavailable
from modelfn.spec import RuntimeSpec

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger("modelfn")

# ONNX Runtime type string -> (numpy dtype, Open Inference Protocol datatype)
ORT_TYPES: dict[str, tuple[Any, str]] = {
    "tensor(float)": (np.float32, "FP32"),
    "tensor(double)": (np.float64, "FP64"),
    "tensor(float16)": (np.float16, "FP16"),
    "tensor(int8)": (np.int8, "INT8"),
    "tensor(int16)": (np.int16, "INT16"),
    "tensor(int32)": (np.int32, "INT32"),
    "tensor(int64)": (np.int64, "INT64"),
    "tensor(uint8)": (np.uint8, "UINT8"),
    "tensor(uint16)": (np.uint16, "UINT16"),
    "tensor(uint32)": (np.uint32, "UINT32"),
    "tensor(uint64)": (np.uint64, "UINT64"),
    "tensor(bool)": (np.bool_, "BOOL"),
    "tensor(string)": (np.object_, "BYTES"),
}
OIP_TO_NUMPY = {oip: dtype for dtype, oip in ORT_TYPES.values()}


class TensorInfo:
    """One graph input or output: its name, dtype and shape (None for a dynamic axis). Read-only
    by convention: a frozen dataclass's generated methods cost ~0.5 ms of a Lambda cold start."""

    def __init__(self, name: str, type: str, shape: tuple[int | None, ...] | None) -> None:
        self.name = name
        self.type = type
        self.shape = shape

    def __repr__(self) -> str:
        return f"TensorInfo(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorInfo):
            return NotImplemented
        return (self.name, self.type, self.shape) == (other.name, other.type, other.shape)

    def __hash__(self) -> int:
        return hash((self.name, self.type, self.shape))

    @cached_property
    def dtype(self) -> Any:
        if self.type not in ORT_TYPES:
            raise ModelUnavailable(f"{self.name}: ONNX type {self.type} is not supported by the tensor codec")
        return np.dtype(ORT_TYPES[self.type][0])

    @property
    def datatype(self) -> str:
        return ORT_TYPES.get(self.type, (None, self.type))[1]

    @cached_property
    def fixed_axes(self) -> tuple[tuple[int, int], ...]:
        return tuple((axis, dim) for axis, dim in enumerate(self.shape or ()) if dim is not None)

    @cached_property
    def batched(self) -> bool:
        """The first axis is dynamic: requests can be stacked along it."""
        return bool(self.shape) and self.shape[0] is None  # type: ignore[index]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "datatype": self.datatype,
            "shape": [-1 if d is None else d for d in self.shape or ()],
        }


def _info(arg: Any) -> TensorInfo:
    shape = arg.shape
    dims = None if shape is None else tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)
    return TensorInfo(arg.name, arg.type, dims)


def providers_for(runtime: RuntimeSpec) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if runtime.accelerator == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if runtime.gpu_fallback:
        log.warning("accelerator = 'gpu' but no CUDA provider is available (%s); running on CPU", available)
        return ["CPUExecutionProvider"]
    raise ModelUnavailable(
        f"accelerator = 'gpu' but ONNX Runtime here offers only {available}: install onnxruntime-gpu on a machine "
        "with an NVIDIA GPU and CUDA, or set runtime.gpu_fallback = true to run on CPU"
    )


def _ort_home() -> None:
    """ONNX Runtime writes a device id under $HOME, which is read-only on Lambda."""
    home = os.environ.get("HOME", "")
    if not home or not os.access(home, os.W_OK):
        os.environ["HOME"] = "/tmp"


def create_session(path: Path, runtime: RuntimeSpec) -> ort.InferenceSession:
    _ort_home()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime.threads
    options.inter_op_num_threads = 1
    # ONNX Runtime's pool threads spin between the operators of a run (parking them there costs
    # 20 % of sentence-embed's throughput) and, by default, for a while after it; stopped when the
    # last run returns, that CPU goes to the server's event loop: 12-15 % less server CPU per
    # request at concurrency 1 (bench/server_throughput.py's load, paired servers).
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[runtime.graph_optimization]
    providers = providers_for(runtime)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        raise ModelUnavailable(f"ONNX Runtime could not load {path.name}: {exc}") from exc
    if providers[0] == "CUDAExecutionProvider" and session.get_providers()[0] != "CUDAExecutionProvider":
        if not runtime.gpu_fallback:
            raise ModelUnavailable(
                "the CUDA provider is installed but could not start (CUDA/cuDNN libraries missing?); "
                "set runtime.gpu_fallback = true to run on CPU"
            )
        log.warning("CUDA provider failed to start; running on CPU")
    return session


Runner = Callable[[list[str], dict[str, np.ndarray]], list[Any]]


def runner(session: ort.InferenceSession) -> Runner:
    """`session.run` as requests call it: with one `RunOptions` for every call (without one,
    ONNX Runtime builds a default per call, about 0.75 µs) and, for a session on the CPU alone,
    past the Python wrapper's per-call checks (about 1 µs: that the feeds name every input and
    hold no other session's tensors, which the codec has made sure of). A session with another
    provider keeps the wrapper, which moves to the CPU if that provider fails mid-run."""
    import onnxruntime as ort

    options = ort.RunOptions()
    core = getattr(session, "_sess", None)
    if core is None or session.get_providers() != ["CPUExecutionProvider"]:
        return lambda names, feeds: session.run(names, feeds, options)  # type: ignore[no-any-return]
    return lambda names, feeds: core.run(names, feeds, options)  # type: ignore[no-any-return]


def signature(session: ort.InferenceSession) -> tuple[list[TensorInfo], list[TensorInfo]]:
    return [_info(a) for a in session.get_inputs()], [_info(a) for a in session.get_outputs()]


def synthetic_feeds(inputs: list[TensorInfo]) -> dict[str, np.ndarray]:
    """A zero input of the graph's own dtypes, dynamic axes set to 1."""
    feeds = {}
    for info in inputs:
        shape = tuple(1 if d is None else d for d in info.shape or ())
        if info.type == "tensor(string)":
            feeds[info.name] = np.full(shape, "", dtype=object)
        else:
            feeds[info.name] = np.zeros(shape, dtype=info.dtype)
    return feeds


def warm_up(session: ort.InferenceSession, inputs: list[TensorInfo]) -> bool:
    """Run once so the first request does not pay for lazy allocations; a model whose
    synthetic input is invalid (say, token ids that must be positive) is still served."""
    import onnxruntime as ort

    # ONNX Runtime logs a failed run in red on stderr before raising; here a failure is expected
    # and harmless, so its log is raised to fatal-only for this one run.
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    try:
        session.run(None, synthetic_feeds(inputs), quiet)
        return True
    except Exception as exc:  # warm-up is an optimisation, never a reason to refuse service
        log.info(
            "warm-up skipped: the model refuses a synthetic input (zeros, dynamic axes of 1): %s; "
            "requests are served as usual, the first one pays for the lazy allocations",
            _reason(exc),
        )
        return False


def _reason(exc: Exception) -> str:
    """ONNX Runtime's own words from one of its errors, on one line."""
    text = str(exc)
    if "Status Message: " in text:
        text = text.split("Status Message: ", 1)[1]
    return " ".join(text.split())
