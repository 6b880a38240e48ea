"""The server's metrics (`modelfn serve`, Cloud Run): Prometheus text on `GET /metrics`, and
OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. prometheus_client and the
OpenTelemetry SDK come with the `server` extra and are imported only here, by
`modelfn.asgi.create_app`: never on Lambda's path (Lambda sends EMF, see `handlers.aws`).

Labels stay bounded: `function` only for a function this server has, `route` is the route
table's template, never the path a client sent."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from modelfn.errors import ModelfnError
from modelfn.monitor import Reporter
from modelfn.routes import function_of, match

if TYPE_CHECKING:
    from modelfn.drift import DriftReport
    from modelfn.http import HttpResponse
    from modelfn.routes import Route
    from modelfn.service import Service

log = logging.getLogger("modelfn")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text format every Prometheus scrapes (prometheus_client's own default now names version 1.0.0)."""


class ServerMetrics(Reporter):
    """Every metric of one server, in a registry of its own (several apps in one process stay apart)."""

    def __init__(self, functions: list[str]) -> None:
        super().__init__()
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.functions = frozenset(functions)
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "modelfn_requests", "Requests answered, by route and status", ["function", "route", "status"], registry=r
        )
        self.errors = Counter(
            "modelfn_errors",
            "Requests answered with an error, by status and error code",
            ["function", "status", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "modelfn_request_duration_seconds",
            "Time from request to answer",
            ["function", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "modelfn_batch_rows",
            "Rows per merged model run (micro-batching)",
            ["function"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "modelfn_queue_depth", "Requests waiting for the micro-batcher", ["function"], registry=r
        )
        self.cache_requests = Counter(
            "modelfn_cache_requests",
            "Prediction cache lookups by outcome (hit, miss, error)",
            ["function", "outcome"],
            registry=r,
        )
        self.psi = Gauge(
            "modelfn_drift_psi", "PSI of an input feature, last window", ["function", "feature"], registry=r
        )
        self.psi_max = Gauge(
            "modelfn_drift_psi_max", "Largest input feature PSI, last window", ["function"], registry=r
        )
        self.shift = Gauge(
            "modelfn_output_shift", "PSI of an output feature, last window", ["function", "feature"], registry=r
        )
        self.shift_max = Gauge("modelfn_output_shift_max", "Largest output PSI, last window", ["function"], registry=r)
        self.drift_rows = Counter("modelfn_drift_rows", "Rows counted for drift", ["function"], registry=r)
        self.drift_windows = Counter("modelfn_drift_windows", "Drift windows reported", ["function"], registry=r)
        self.otlp = OtlpMirror.from_env()
        # the labelled series each answer counts in, by (function, route, status): prometheus_client
        # checks and looks up label values on every `labels()` call, ~5 us of each request
        self._labelled: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def request(
        self, method: str, path: str, response: HttpResponse, seconds: float, route: Route | None = None
    ) -> None:
        """One answer; `route` when the caller has matched it already."""
        name = function_of(path)
        function = name if name in self.functions else ""
        if route is None:
            try:
                route = match(method, path)[0]
            except ModelfnError:
                route = None
        template = route.template if route is not None else "unmatched"
        status = response.status
        labelled = self._labelled.get((function, template, status))
        if labelled is None:  # bounded: the server's functions, the route table, the statuses it answers
            labelled = (self.requests.labels(function, template, str(status)), self.latency.labels(function, template))
            self._labelled[(function, template, status)] = labelled
        labelled[0].inc()
        labelled[1].observe(seconds)
        code = ""
        if status >= 400:
            code = str(response.body.get("code", "")) if isinstance(response.body, dict) else ""
            self.errors.labels(function, str(status), code).inc()
        if self.otlp is not None:
            self.otlp.request(function, template, str(status), code, seconds)

    def batch(self, function: str, rows: int) -> None:
        self.batch_size.labels(function).observe(rows)
        if self.otlp is not None:
            self.otlp.batch(function, rows)

    def cache(self, function: str, outcome: str) -> None:
        super().cache(function, outcome)
        self.cache_requests.labels(function, outcome).inc()
        if self.otlp is not None:
            self.otlp.cache(function, outcome)

    def drift(self, report: DriftReport) -> None:
        super().drift(report)
        name = report.function
        for feature, value in report.psi.items():
            self.psi.labels(name, feature).set(value)
        for feature, value in report.shift.items():
            self.shift.labels(name, feature).set(value)
        self.psi_max.labels(name).set(report.max_psi)
        self.shift_max.labels(name).set(report.max_shift)
        self.drift_rows.labels(name).inc(report.rows)
        self.drift_windows.labels(name).inc()
        if self.otlp is not None:
            self.otlp.drift(report)

    def exposition(self, service: Service) -> tuple[bytes, str]:
        """The text format, with the queue depths read now."""
        from prometheus_client import generate_latest

        for name, batcher in service.batchers.items():
            self.queue_depth.labels(name).set(batcher.queue.qsize())
        return generate_latest(self.registry), CONTENT_TYPE

    def close(self) -> None:
        if self.otlp is not None:
            self.otlp.close()


class OtlpMirror:
    """The same numbers sent over OTLP/HTTP by the OpenTelemetry SDK, every
    `OTEL_METRIC_EXPORT_INTERVAL` ms (SDK default 60 s) and at shutdown. The exporter reads the
    standard `OTEL_EXPORTER_OTLP_*` variables (endpoint, headers, timeout)."""

    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource

        service = os.environ.get("OTEL_SERVICE_NAME") or "modelfn"
        reader = PeriodicExportingMetricReader(OTLPMetricExporter())
        self.provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": service}))
        meter = self.provider.get_meter("modelfn")
        self.requests = meter.create_counter("modelfn.requests", description="Requests answered")
        self.errors = meter.create_counter("modelfn.errors", description="Requests answered with an error")
        self.latency = meter.create_histogram("modelfn.request.duration", unit="s", description="Request to answer")
        self.batch_rows = meter.create_histogram("modelfn.batch.rows", description="Rows per merged model run")
        self.cache_requests = meter.create_counter("modelfn.cache.requests", description="Cache lookups by outcome")
        self.psi = meter.create_gauge("modelfn.drift.psi", description="PSI of a feature, last window")
        self.psi_max = meter.create_gauge("modelfn.drift.psi_max", description="Largest input PSI, last window")

    @classmethod
    def from_env(cls) -> OtlpMirror | None:
        if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")):
            return None
        try:
            return cls()
        except ImportError as exc:
            log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed: %s", exc)
            return None

    def request(self, function: str, route: str, status: str, code: str, seconds: float) -> None:
        labels: Any = {"function": function, "route": route, "status": status}
        self.requests.add(1, labels)
        self.latency.record(seconds, {"function": function, "route": route})
        if code or int(status) >= 400:
            self.errors.add(1, {"function": function, "status": status, "code": code})

    def batch(self, function: str, rows: int) -> None:
        self.batch_rows.record(rows, {"function": function})

    def cache(self, function: str, outcome: str) -> None:
        self.cache_requests.add(1, {"function": function, "outcome": outcome})

    def drift(self, report: DriftReport) -> None:
        for role, values in (("input", report.psi), ("output", report.shift)):
            for feature, value in values.items():
                self.psi.set(value, {"function": report.function, "feature": feature, "role": role})
        self.psi_max.set(report.max_psi, {"function": report.function})

    def close(self) -> None:
        self.provider.shutdown()


def server_metrics(service: Service) -> ServerMetrics | None:
    """Metrics for a server, or None without prometheus_client (the `server` extra)."""
    try:
        metrics = ServerMetrics(sorted(service.registry.specs))
    except ImportError:
        log.info("/metrics is off: prometheus_client is not installed (pip install 'modelfn[server]')")
        return None
    service.monitor.reporter = metrics
    return metrics
