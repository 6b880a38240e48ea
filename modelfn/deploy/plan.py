"""Routing: for each function and provider, where it lands and why. The CDK app, the
Cloud Run and Cloud Functions configuration and the Azure app folder follow this plan."""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from modelfn.spec import FunctionSpec

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


@dataclass(frozen=True)
class Placement:
    function: str
    provider: str
    target: str
    reason: str
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def deployable(self) -> bool:
        return self.target != "unsupported"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def code_bytes() -> int:
    """modelfn + handlers, as they go into a Lambda zip."""
    root = Path(__file__).resolve().parents[2]
    return folder_bytes(root / "modelfn") + folder_bytes(root / "handlers")


def model_bytes(spec: FunctionSpec) -> int:
    """Bytes the model adds to the package: a local file ships with the function folder;
    a remote one is fetched into /tmp at init and counts against ephemeral storage instead."""
    if urlparse(spec.model.source).scheme in ("s3", "gs", "http", "https"):
        return 0
    return folder_bytes(spec.folder) - sum(p.stat().st_size for p in left_behind(spec))


MODEL_SUFFIXES = (".onnx", ".ort")


def left_behind(spec: FunctionSpec) -> set[Path]:
    """Model files in the function folder that the spec does not serve (the original that
    `modelfn optimize` keeps beside its output, an older export): no bundle ships them."""
    served = (spec.folder / spec.model.source).resolve()
    return {p for p in spec.folder.rglob("*") if p.suffix in MODEL_SUFFIXES and p.resolve() != served}


def function_files(spec: FunctionSpec) -> Callable[[str, list[str]], set[str]]:
    """A `shutil.copytree` ignore for the function folder: leaves out `left_behind` models."""
    unused = {p.resolve() for p in left_behind(spec)}
    return lambda folder, names: {n for n in names if (Path(folder) / n).resolve() in unused}


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
    if spec.triggers.http is not None and spec.batching.enabled:
        to_functions = f"; {' and '.join(events)} events go to Cloud Functions" if events else ""
        return run(
            "cloud-run",
            "HTTP with micro-batching: Cloud Run runs the batching server with concurrency "
            f"{spec.deploy.concurrency} and CPU always allocated{to_functions}",
        )
    served = ["http"] * (spec.triggers.http is not None) + events
    return run(
        "cloud-functions",
        f"CPU model, code + model = {total / MB:.1f} MB within Cloud Functions' limits: "
        f"2nd gen function for {', '.join(served) or 'no trigger'}",
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
    return {"aws": _aws, "gcp": _gcp, "azure": _azure}[provider](spec)


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
        print(json.dumps([asdict(p) for p in placements], indent=2))
    else:
        print(f"{'function':20} {'provider':8} {'target':18} why")
        for p in placements:
            print(f"{p.function:20} {p.provider:8} {p.target:18} {p.reason}")
    if args.out:
        if not args.provider:
            print("modelfn plan: --out needs --provider (gcp or azure; AWS deploys through cdk/)")
            return 2
        if args.provider not in WRITERS:
            print(f"modelfn plan: {args.provider} deploys through cdk/ (see README), nothing to write")
            return 2
        writer = importlib.import_module(WRITERS[args.provider])
        by_name = {s.name: s for s in specs}
        for p in placements:
            if p.deployable:
                for path in writer.write(by_name[p.function], p, Path(args.out)):
                    print(f"wrote {path}")
    return 0
