"""Per-version metrics on Lambda, as CloudWatch EMF documents of their own, for a function that
declares more than one version (one with a single model writes nothing more than before).

Live answers: `VersionRequests`, `VersionErrors` (5xx), `VersionLatency` with the dimensions
{service, function, version}. Shadow copies: `ShadowRequests`, `ShadowErrors` (any failure of
a copy), `ShadowLatency` with {service, function, version}, and per output
`ShadowLabelAgreement`, `ShadowMaxAbsDiff`, `ShadowMeanAbsDiff`, `ShadowCosine` with
{service, function, version, output}."""

from __future__ import annotations

import functools

from handlers.aws.telemetry import Telemetry
from modelfn.observations import DROPPED, Observation, Recorder

AGREEMENT = {
    "label_agreement": ("ShadowLabelAgreement", "None"),
    "max_abs_diff": ("ShadowMaxAbsDiff", "None"),
    "mean_abs_diff": ("ShadowMeanAbsDiff", "None"),
    "cosine": ("ShadowCosine", "None"),
}


@functools.cache
def version_metrics(telemetry: Telemetry) -> Recorder:
    """The recorder writing through `telemetry` (one per telemetry, however often an app is built)."""

    def record(observation: Observation) -> None:
        if not observation.versioned or observation.status == DROPPED:
            return
        prefix = "Version" if observation.role == "live" else "Shadow"
        dimensions = {"service": telemetry.service, "function": observation.function, "version": observation.version}
        telemetry.document(
            dimensions,
            [
                (f"{prefix}Requests", "Count", 1.0),
                (f"{prefix}Errors", "Count", 1.0 if observation.failed else 0.0),
                (f"{prefix}Latency", "Milliseconds", observation.ms),
            ],
        )
        for output, measured in (observation.agreement or {}).items():
            values = [(*AGREEMENT[k], v) for k, v in measured.items() if k in AGREEMENT]
            if values:
                telemetry.document({**dimensions, "output": output}, values)

    return record
