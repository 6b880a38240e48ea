"""Drift windows and cache outcomes as CloudWatch metrics (EMF) on Lambda.

Per window: `DriftPSIMax`, `OutputShiftMax` and `DriftRows` with the dimensions
{service, function} (the CDK stack alarms on `DriftPSIMax`), and `DriftPSI` / `OutputShift`
per feature with {service, function, feature}. Per invocation: `CacheHits`, `CacheMisses`,
`CacheErrors` beside `Invocations` and `Latency`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from handlers.aws.telemetry import Telemetry
from modelfn.monitor import Reporter

if TYPE_CHECKING:
    from modelfn.drift import DriftReport

CACHE_METRICS = {"hit": "CacheHits", "miss": "CacheMisses", "error": "CacheErrors"}


class EmfReporter(Reporter):
    def __init__(self, telemetry: Telemetry) -> None:
        super().__init__()
        self.telemetry = telemetry

    def drift(self, report: DriftReport) -> None:
        base = {"service": self.telemetry.service, "function": report.function}
        self.telemetry.document(
            base,
            [
                ("DriftPSIMax", "None", report.max_psi),
                ("OutputShiftMax", "None", report.max_shift),
                ("DriftRows", "Count", float(report.rows)),
            ],
        )
        for name, values in (("DriftPSI", report.psi), ("OutputShift", report.shift)):
            for feature, value in values.items():
                self.telemetry.document({**base, "feature": feature}, [(name, "None", value)])

    def cache(self, function: str, outcome: str) -> None:
        super().cache(function, outcome)
        self.telemetry.metric(CACHE_METRICS[outcome], 1)
