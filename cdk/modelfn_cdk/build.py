"""From `functions/*/function.toml` to stacks: each function goes where `modelfn.deploy.plan` places it
on AWS; GPU functions are skipped with the reason (Lambda has no GPUs), anything else the
app cannot build stops the synth with a message naming the field to change."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from aws_cdk import App, Validations

from modelfn.deploy.dependencies import requirements
from modelfn.deploy.plan import place
from modelfn.spec import FunctionSpec, discover, load_spec
from modelfn_cdk.assets import LayerArtifact, dependency_layer, runtime_layer
from modelfn_cdk.settings import DeployRefused, Settings
from modelfn_cdk.stack import FunctionStack, refusals


@dataclass
class Built:
    stacks: dict[str, FunctionStack] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def load_functions(settings: Settings) -> list[FunctionSpec]:
    found = discover(settings.functions_dir)
    names = settings.names or tuple(found)
    missing = sorted(set(names) - set(found))
    if missing:
        raise DeployRefused(f"modelfn:functions names {missing}, not found under {settings.functions_dir}")
    return [load_spec(found[name]) for name in names]


def build(app: App, settings: Settings, specs: list[FunctionSpec] | None = None) -> Built:
    """Add one `FunctionStack` per deployable function to `app`."""
    built = Built()
    layers: dict[tuple[object, ...], LayerArtifact] = {}
    for spec in load_functions(settings) if specs is None else specs:
        placement = place(spec, "aws")
        if spec.runtime.accelerator == "gpu":
            # Lambda has no GPUs; the same function runs on Cloud Run with an L4 (modelfn plan --provider gcp)
            built.skipped[spec.name] = placement.reason
            print(f"modelfn cdk: skipping {spec.name}: {placement.reason}", file=sys.stderr)
            continue
        problems = refusals(spec, placement, settings.schedules.get(spec.name, ()))
        if problems:
            raise DeployRefused(f"{spec.name}: " + "; ".join(problems))
        artifacts: list[LayerArtifact] = []
        if placement.target == "lambda-zip":
            python, arch = spec.deploy.python, spec.deploy.architecture
            needs = requirements(spec, "aws")
            runtime, deps = ("runtime", python, arch), ("deps", python, arch, needs)
            if runtime not in layers:
                layers[runtime] = runtime_layer(python, arch, settings.layers_dir, settings.layer)
            if deps not in layers:
                layers[deps] = dependency_layer(needs, python, arch, settings.layers_dir)
            artifacts += [layers[runtime], layers[deps]]
        built.stacks[spec.name] = FunctionStack(
            app,
            f"{settings.stack_prefix}-{spec.name}",
            spec=spec,
            placement=placement,
            settings=settings,
            layers=artifacts,
        )
    if settings.nag:
        from cdk_nag import AwsSolutionsChecks

        Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return built
