"""Routing: for each function and provider, where it lands and why. The CDK app, the
Cloud Run and Cloud Functions configuration and the Azure app folder follow this plan."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from modelfn.errors import ModelUnavailable
from modelfn.spec import FunctionSpec, not_built

if TYPE_CHECKING:
    from modelfn.session import TensorInfo

MB = 1024 * 1024
LAMBDA_UNZIPPED_LIMIT = 250 * MB
CLOUD_FUNCTIONS_SOURCE_LIMIT = 500 * MB
# The slim ONNX Runtime + NumPy layer: 78.4 MB measured on x86_64 (layers/README.md), rounded up.
LAYER_UNZIPPED_BYTES = 80 * MB
GPU_TYPE = "nvidia-l4"
# What Cloud Run requires of an instance with one L4 GPU.
GPU_MIN_CPU = 4
GPU_MIN_MEMORY_MB = 16 * 1024

PROVIDERS = ("aws", "gcp", "azure")
EVENT_TRIGGERS = {"aws": ("s3", "sqs", "sns", "eventbridge"), "gcp": ("pubsub", "gcs"), "azure": ("blob", "queue")}
# modules that write a provider's deployable configuration: write(spec, placement, out_dir) -> list[Path]
WRITERS = {"gcp": "modelfn.deploy.gcp", "azure": "modelfn.deploy.azure"}
REMOTE_SCHEMES = ("s3", "gs", "http", "https")
# The target of a function whose model file is not there yet: nothing can be sized or written.
NOT_BUILT = "not-built"


@dataclass(frozen=True)
class Placement:
    function: str
    provider: str
    target: str
    reason: str
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def deployable(self) -> bool:
        return self.target not in ("unsupported", NOT_BUILT)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def code_bytes() -> int:
    """modelfn + handlers, as they go into a Lambda zip."""
    root = Path(__file__).resolve().parents[2]
    return folder_bytes(root / "modelfn") + folder_bytes(root / "handlers")


def model_bytes(spec: FunctionSpec) -> int:
    """Bytes the model adds to the package: a local file ships with the function folder;
    a remote one is fetched into /tmp at init and counts against ephemeral storage instead."""
    if urlparse(spec.model.source).scheme in REMOTE_SCHEMES:
        return 0
    return folder_bytes(spec.folder) - sum(p.stat().st_size for p in left_behind(spec))


MODEL_SUFFIXES = (".onnx", ".ort")


def left_behind(spec: FunctionSpec) -> set[Path]:
    """Model files in the function folder that the spec does not serve (the original that
    `modelfn optimize` keeps beside its output, an older export): no bundle ships them. Every
    version in `[model.versions]` is served."""
    sources = [spec.model.source, *(v.source for v in spec.model.versions.values())]
    served = {(spec.folder / source).resolve() for source in sources}
    return {p for p in spec.folder.rglob("*") if p.suffix in MODEL_SUFFIXES and p.resolve() not in served}


def function_files(spec: FunctionSpec) -> Callable[[str, list[str]], set[str]]:
    """A `shutil.copytree` ignore for the function folder: leaves out `left_behind` models."""
    unused = {p.resolve() for p in left_behind(spec)}
    return lambda folder, names: {n for n in names if (Path(folder) / n).resolve() in unused}


def unbuilt(spec: FunctionSpec) -> str | None:
    """Why a function cannot be planned yet: its local model file is not there (with the
    command that builds it where a build script sits beside function.toml); None if it is."""
    if urlparse(spec.model.source).scheme in REMOTE_SCHEMES or (spec.folder / spec.model.source).is_file():
        return None
    return not_built(spec) or f"{spec.folder / spec.model.source} does not exist; build or copy the model there"


def require_built(spec: FunctionSpec) -> None:
    """What a writer checks first: a bundle without its model deploys, then fails at every start."""
    why = unbuilt(spec)
    if why:
        raise ModelUnavailable(f"{spec.name}: {why}; no bundle written")


def batching(spec: FunctionSpec) -> tuple[bool, str]:
    """Whether the server micro-batches this function, by the rule of `ModelFunction.batchable`
    (batching on, and every input and output with a dynamic first axis) read from the graph
    without loading it for inference, and if not, why. A remote model not in the cache here is
    taken at its spec's word."""
    if not spec.batching.enabled:
        return False, "batching is off"
    source = spec.model.source
    if urlparse(source).scheme in REMOTE_SCHEMES:
        from modelfn.sources import cached_path

        path = cached_path(source)
    else:
        path = spec.folder / source
    if not path.is_file():
        return True, ""
    fixed = [t.name for t in graph_tensors(path) if not t.batched]
    if fixed:
        return False, f"{', '.join(repr(n) for n in fixed)} without a dynamic first axis"
    return True, ""


def graph_tensors(path: Path) -> list[TensorInfo]:
    """The graph's inputs and outputs as `modelfn check` sees them: parsed with the `onnx`
    package where it is installed, else (or where a value declares no shape, which ONNX
    Runtime infers) from an ONNX Runtime session's metadata."""
    from modelfn.session import TensorInfo, signature

    try:
        import onnx
    except ImportError:
        pass
    else:
        graph = onnx.load(str(path), load_external_data=False).graph
        initialisers = {i.name for i in graph.initializer}
        values = [v for v in graph.input if v.name not in initialisers] + list(graph.output)
        if all(v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape") for v in values):
            # the dtype plays no part in batching; only the shape is read
            return [TensorInfo(v.name, "", _shape(v.type.tensor_type.shape)) for v in values]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    inputs, outputs = signature(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
    return [*inputs, *outputs]


def _shape(shape: Any) -> tuple[int | None, ...]:
    """Fixed sizes as ints and every other axis as None, as `modelfn.session` reads them."""
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in shape.dim)


def _aws(spec: FunctionSpec) -> Placement:
    if spec.runtime.accelerator == "gpu":
        return Placement(
            spec.name,
            "aws",
            "unsupported",
            "accelerator = 'gpu': Lambda has no GPUs; deploy this function to Cloud Run GPU "
            "(modelfn plan --provider gcp), or serve the same container image on a GPU instance",
        )
    if spec.deploy.python == "3.11":
        # python3.11 runs on Amazon Linux 2 (glibc 2.26), zip or image alike
        return Placement(
            spec.name,
            "aws",
            "unsupported",
            "deploy.python = '3.11': ONNX Runtime's wheels need glibc 2.28, which Lambda has from python3.12 on; "
            "use python = '3.12' or '3.13'",
        )
    sizes = {"code": code_bytes(), "layer": LAYER_UNZIPPED_BYTES, "function": model_bytes(spec)}
    total = sum(sizes.values())
    fits = total <= LAMBDA_UNZIPPED_LIMIT
    if spec.deploy.package == "container" or (spec.deploy.package == "auto" and not fits):
        why = (
            "deploy.package = 'container'"
            if spec.deploy.package == "container"
            else f"code + layer + model = {total / MB:.0f} MB, over Lambda's 250 MB unzipped for zip packages"
        )
        if spec.deploy.snapstart:
            return Placement(
                spec.name,
                "aws",
                "unsupported",
                f"{why}, but deploy.snapstart needs a zip package (SnapStart does not support container images); "
                "use provisioned_concurrency instead, or load the model from S3 to fit a zip",
                sizes,
            )
        return Placement(spec.name, "aws", "lambda-container", f"{why}: Lambda container image (up to 10 GB)", sizes)
    if not fits:
        return Placement(
            spec.name,
            "aws",
            "unsupported",
            f"deploy.package = 'zip' but code + layer + model = {total / MB:.0f} MB exceeds 250 MB unzipped; "
            "use package = 'auto' or 'container'",
            sizes,
        )
    return Placement(
        spec.name,
        "aws",
        "lambda-zip",
        f"code + layer + model = {total / MB:.0f} MB fits Lambda's 250 MB: zip + runtime layer",
        sizes,
    )


def _gcp(spec: FunctionSpec) -> Placement:
    sizes = {"function": model_bytes(spec), "code": code_bytes()}
    total = sum(sizes.values())
    events = [t for t in EVENT_TRIGGERS["gcp"] if getattr(spec.triggers, t) is not None]
    via_eventarc = f"; {' and '.join(events)} events reach it through Eventarc" if events else ""

    def run(target: str, why: str) -> Placement:
        return Placement(spec.name, "gcp", target, why, sizes)

    if spec.runtime.accelerator == "gpu":
        return run(
            "cloud-run-gpu",
            f"accelerator = 'gpu': Cloud Run with one {GPU_TYPE} GPU (at least {GPU_MIN_CPU} vCPU and "
            f"{GPU_MIN_MEMORY_MB // 1024} GiB); Cloud Functions has no GPUs{via_eventarc}",
        )
    if spec.deploy.package == "container":
        return run("cloud-run", f"deploy.package = 'container': Cloud Run service{via_eventarc}")
    if total > CLOUD_FUNCTIONS_SOURCE_LIMIT:
        return run(
            "cloud-run",
            f"code + model = {total / MB:.0f} MB, over Cloud Functions' 500 MB source limit: "
            f"Cloud Run container{via_eventarc}",
        )
    batches, unbatched = batching(spec)
    if spec.triggers.http is not None and batches:
        to_functions = f"; {' and '.join(events)} events go to Cloud Functions" if events else ""
        return run(
            "cloud-run",
            "HTTP with micro-batching: Cloud Run runs the batching server with concurrency "
            f"{spec.deploy.concurrency} and CPU always allocated{to_functions}",
        )
    served = ["http"] * (spec.triggers.http is not None) + events
    unbatched = f" (no micro-batching: {unbatched})" if spec.triggers.http is not None and unbatched else ""
    return run(
        "cloud-functions",
        f"CPU model, code + model = {total / MB:.1f} MB within Cloud Functions' limits: "
        f"2nd gen function for {', '.join(served) or 'no trigger'}{unbatched}",
    )


def _azure(spec: FunctionSpec) -> Placement:
    if spec.runtime.accelerator == "gpu":
        return Placement(
            spec.name,
            "azure",
            "unsupported",
            "accelerator = 'gpu': Azure Functions has no GPUs; use Cloud Run GPU (--provider gcp)",
        )
    return Placement(
        spec.name, "azure", "azure-functions", "CPU model: Azure Functions app (Python v2 programming model)"
    )


def place(spec: FunctionSpec, provider: str) -> Placement:
    why = unbuilt(spec)
    if why:
        return Placement(spec.name, provider, NOT_BUILT, why)
    return {"aws": _aws, "gcp": _gcp, "azure": _azure}[provider](spec)


SHADOW_RUNS = {
    "aws": "in a Lambda of its own: one async invoke of its `shadow` alias per copy (the CDK app makes both)",
    "cloud-run": "in the same container, after the answer, only while no live request is in flight (64 wait at most)",
    "gcp": "in a function of its own on the Pub/Sub topic MODELFN_SHADOW_TOPIC; unset: in-process, after the answer",
    "azure": "in a function of its own on the Storage Queue MODELFN_SHADOW_QUEUE; unset: in-process, after the answer",
}


def traffic_policy(spec: FunctionSpec) -> dict[str, Any] | None:
    """A versioned function's `[traffic]` as the plan shows it: live shares in percent, the
    shadow and its sample; None for a function with one model."""
    if len(spec.model.version_names) == 1:
        return None
    weights = {v: w for v, w in (spec.traffic.weights or {spec.model.version: 1.0}).items() if w > 0}
    total = sum(weights.values())
    return {
        "versions": spec.model.version_names,
        "default": spec.model.version,
        "weights_percent": {v: round(w / total * 100, 2) for v, w in weights.items()},
        "shadow": spec.traffic.shadow,
        "shadow_sample": spec.traffic.shadow_sample if spec.traffic.shadow else None,
    }


def shadow_runs(placement: Placement) -> str:
    if placement.provider == "gcp" and placement.target.startswith("cloud-run"):
        return SHADOW_RUNS["cloud-run"]
    return SHADOW_RUNS[placement.provider]


def _print_traffic(specs: list[FunctionSpec], placements: list[Placement]) -> None:
    for spec in specs:
        policy = traffic_policy(spec)
        if policy is None:
            continue
        live = ", ".join(f"{v} {share:g} %" for v, share in policy["weights_percent"].items())
        print(f"\ntraffic {spec.name}: versions {', '.join(policy['versions'])}; live {live} (sticky by x-modelfn-key)")
        if policy["shadow"]:
            print(f"  shadow {policy['shadow']} on {policy['shadow_sample'] * 100:g} % of requests, runs:")
            for p in placements:
                if p.function == spec.name and p.deployable:
                    print(f"    {p.provider:8} {shadow_runs(p)}")


def plan_all(specs: list[FunctionSpec], providers: tuple[str, ...] = PROVIDERS) -> list[Placement]:
    return [place(spec, provider) for spec in specs for provider in providers]


def main(args: argparse.Namespace) -> int:
    from modelfn.spec import discover, load_spec

    found = discover(Path(args.functions_dir) if args.functions_dir else None)
    names = args.names or list(found)
    specs = [load_spec(found[name]) for name in names if name in found]
    missing = sorted(set(names) - set(found))
    if missing:
        print(f"modelfn plan: no function named {missing}")
        return 2
    providers = (args.provider,) if args.provider else PROVIDERS
    placements = plan_all(specs, providers)
    if args.json:
        policies = {s.name: traffic_policy(s) for s in specs}
        shown = []
        for p in placements:
            shown.append(asdict(p))
            policy = policies[p.function]
            if policy is not None:  # only versioned functions: a one-model function's entry is unchanged
                shadow = {"shadow_runs": shadow_runs(p)} if policy["shadow"] and p.deployable else {}
                shown[-1]["traffic"] = {**policy, **shadow}
        print(json.dumps(shown, indent=2))
    else:
        print(f"{'function':20} {'provider':8} {'target':18} why")
        for p in placements:
            print(f"{p.function:20} {p.provider:8} {p.target:18} {p.reason}")
        _print_traffic(specs, placements)
    if args.out:
        if not args.provider:
            print("modelfn plan: --out needs --provider (gcp or azure; AWS deploys through cdk/)")
            return 2
        if args.provider not in WRITERS:
            print(f"modelfn plan: {args.provider} deploys through cdk/ (see README), nothing to write")
            return 2
        writer = importlib.import_module(WRITERS[args.provider])
        by_name = {s.name: s for s in specs}
        refused = 0
        for p in placements:
            if p.target == NOT_BUILT:
                print(f"modelfn plan: {p.function}: {p.reason}; no {p.provider} bundle written", file=sys.stderr)
                refused += 1
            elif p.deployable:
                for path in writer.write(by_name[p.function], p, Path(args.out)):
                    print(f"wrote {path}")
        return 1 if refused else 0
    return 0
