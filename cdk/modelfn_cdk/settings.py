"""What the app reads from CDK context (`cdk.json`, or `cdk synth -c key=value`): where the
functions and the built layers are, and the few knobs that are about an account rather than
a model. Everything about a model comes from its `function.toml`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from constructs import Node

REPO = Path(__file__).resolve().parent.parent.parent
PREFIX = "modelfn:"


class DeployRefused(Exception):
    """A function that the app will not turn into infrastructure; the message says why and what to change."""


@dataclass(frozen=True)
class ProvisionedSchedule:
    """A scheduled change of a function's provisioned-concurrency bounds (Application Auto Scaling)."""

    name: str
    cron: str
    min: int
    max: int


@dataclass(frozen=True)
class Settings:
    functions_dir: Path
    names: tuple[str, ...] = ()
    stack_prefix: str = "Modelfn"
    layers_dir: Path = REPO / "build" / "layers"
    layer: Path | None = None
    staging_dir: Path = REPO / "build" / "cdk"
    log_retention_days: int = 30
    nag: bool = True
    alarm_topic_arn: str | None = None
    utilization_target: float = 0.7
    schedules: dict[str, tuple[ProvisionedSchedule, ...]] = field(default_factory=dict)

    @classmethod
    def from_context(cls, node: Node) -> Settings:
        """Context keys are `modelfn:<name>`; relative paths are taken from the repository root."""

        def get(key: str) -> Any:
            return node.try_get_context(PREFIX + key)

        functions = get("functionsDir") or os.environ.get("MODELFN_FUNCTIONS_DIR") or "functions"
        names = get("functions") or ()
        if isinstance(names, str):
            names = tuple(n.strip() for n in names.split(",") if n.strip())
        layer = get("layer")
        topic = get("alarmTopicArn")
        return cls(
            functions_dir=_path(functions),
            names=tuple(names),
            stack_prefix=str(get("stackPrefix") or "Modelfn"),
            layers_dir=_path(get("layersDir") or "build/layers"),
            layer=_path(layer) if layer else None,
            staging_dir=_path(get("stagingDir") or "build/cdk"),
            log_retention_days=int(get("logRetentionDays") or 30),
            nag=_flag(get("nag"), default=True),
            alarm_topic_arn=str(topic) if topic else None,
            utilization_target=float(get("utilizationTarget") or 0.7),
            schedules=_schedules(get("schedules")),
        )


def _path(value: str | Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO / path


def _flag(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off", "")
    return bool(value)


def _schedules(value: Any) -> dict[str, tuple[ProvisionedSchedule, ...]]:
    """`{"<function>": [{"name", "cron", "min", "max"}, ...]}`, as JSON when given with -c."""
    if not value:
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    return {
        function: tuple(
            ProvisionedSchedule(str(s["name"]), str(s["cron"]), int(s["min"]), int(s["max"])) for s in entries
        )
        for function, entries in value.items()
    }
