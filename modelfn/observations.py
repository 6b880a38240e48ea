"""What became of each answer, per model version: live or shadow, how long it took, its status,
and for a shadow its agreement with the live answer. `record` keeps counts in `STATS` (in
process; the server exports them on `GET /metrics`) and hands each observation to the recorders a
provider subscribes: CloudWatch EMF on Lambda, a structured log line on Google Cloud and Azure."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

log = logging.getLogger("modelfn")
versions_log = logging.getLogger("modelfn.versions")

DROPPED = 0
"""The status of a shadow copy that was not taken (too many in flight)."""
LATENCY_WINDOW = 1024
"""Latency percentiles are over each version's most recent answers."""


class Observation(NamedTuple):
    function: str
    version: str
    role: str
    """live (this version answered) or shadow (a copy, never returned)."""
    ms: float
    status: int
    versioned: bool
    """The function declares more than one version (per-version metrics are only written then)."""
    agreement: dict[str, dict[str, float]] | None = None
    """Per output, a shadow's distance to the live answer (`modelfn.agreement.compare`)."""

    @property
    def failed(self) -> bool:
        """A live answer failed on our side (5xx); a shadow copy failed at all (its input is the live one's)."""
        return self.status >= (500 if self.role == "live" else 400)


Recorder = Callable[[Observation], None]
_recorders: list[Recorder] = []


def subscribe(recorder: Recorder) -> None:
    if recorder not in _recorders:
        _recorders.append(recorder)


def unsubscribe(recorder: Recorder) -> None:
    if recorder in _recorders:
        _recorders.remove(recorder)


def record(observation: Observation) -> None:
    STATS.add(observation)
    for recorder in list(_recorders):
        try:
            recorder(observation)
        except Exception:  # a metrics sink must never fail the request it describes
            log.exception("recording %s %s failed", observation.function, observation.version)


class _Output:
    __slots__ = ("agree", "compared", "cosine", "cosine_n", "max_abs", "rows", "sum_abs")

    def __init__(self) -> None:
        self.rows = self.agree = self.compared = self.cosine_n = 0
        self.max_abs = self.sum_abs = self.cosine = 0.0

    def add(self, measured: dict[str, float]) -> None:
        rows = int(measured.get("rows", 0))
        self.compared += 1
        if "label_agreement" in measured:
            self.rows += rows
            self.agree += round(measured["label_agreement"] * rows)
        if "max_abs_diff" in measured:
            self.max_abs = max(self.max_abs, measured["max_abs_diff"])
            self.sum_abs += measured["mean_abs_diff"]
        if "cosine" in measured:
            self.cosine += measured["cosine"]
            self.cosine_n += 1

    def describe(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"requests": self.compared}
        if self.rows:
            shown["label_agreement"] = self.agree / self.rows
        if self.compared:
            shown["max_abs_diff"] = self.max_abs
            shown["mean_abs_diff"] = self.sum_abs / self.compared
        if self.cosine_n:
            shown["cosine"] = self.cosine / self.cosine_n
        return shown


class VersionStats:
    """Counts for one version in one role since the process started."""

    def __init__(self, version: str, role: str) -> None:
        self.version, self.role = version, role
        self.requests = self.errors = self.rejected = self.dropped = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.outputs: dict[str, _Output] = {}

    def add(self, observation: Observation) -> None:
        if observation.status == DROPPED:
            self.dropped += 1
            return
        self.requests += 1
        if observation.failed:
            self.errors += 1
        elif observation.status >= 400:
            self.rejected += 1
        self.latencies.append(observation.ms)
        for name, measured in (observation.agreement or {}).items():
            self.outputs.setdefault(name, _Output()).add(measured)

    def describe(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        shown: dict[str, Any] = {
            "version": self.version,
            "role": self.role,
            "requests": self.requests,
            "errors": self.errors,
            "rejected": self.rejected,
            "latency_ms": {
                "p50": _quantile(ordered, 0.5),
                "p95": _quantile(ordered, 0.95),
                "max": ordered[-1] if ordered else 0.0,
            },
        }
        if self.role == "shadow":
            shown["dropped"] = self.dropped
            shown["agreement"] = {name: output.describe() for name, output in sorted(self.outputs.items())}
        return shown


def _quantile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


class Stats:
    """Every function's per-version counts in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by: dict[tuple[str, str, str], VersionStats] = {}

    def add(self, observation: Observation) -> None:
        key = (observation.function, observation.version, observation.role)
        with self._lock:
            stats = self._by.get(key)
            if stats is None:
                stats = self._by[key] = VersionStats(observation.version, observation.role)
            stats.add(observation)

    def of(self, function: str, version: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                stats.describe()
                for (name, v, _), stats in sorted(self._by.items())
                if name == function and version in (None, v)
            ]

    def clear(self) -> None:
        with self._lock:
            self._by.clear()


STATS = Stats()


def fields(observation: Observation) -> dict[str, Any]:
    """One observation as the fields of a structured log line."""
    found: dict[str, Any] = {
        "metric": "modelfn.version",
        "function": observation.function,
        "version": observation.version,
        "role": observation.role,
        "latency_ms": round(observation.ms, 3),
        "status": observation.status,
        "error": observation.failed,
    }
    if observation.agreement is not None:
        found["agreement"] = observation.agreement
    return found


def log_recorder(observation: Observation) -> None:
    """A JSON log line per answer of a versioned function (Google Cloud, Azure): log-based
    metrics and queries read `version`, `role`, `latency_ms`, `status` and `agreement`."""
    if observation.versioned:
        from modelfn.http import json_text

        line = fields(observation)
        versions_log.info(json_text(line), extra={"fields": line})


def prometheus_recorder(registry: Any, functions: frozenset[str]) -> Recorder:
    """Per-version counters in a server's Prometheus registry (`modelfn.metrics`), for its own
    functions: `modelfn_version_requests_total{function,version,role,status}`,
    `modelfn_version_duration_seconds{function,version,role}`, and per shadow output
    `modelfn_shadow_rows_total` / `modelfn_shadow_agreeing_rows_total` (their ratio is the label
    agreement), `modelfn_shadow_max_abs_diff` and `modelfn_shadow_cosine` (the last request's)."""
    from prometheus_client import Counter, Gauge, Histogram

    from modelfn.metrics import LATENCY_BUCKETS

    by_version = ["function", "version", "role"]
    by_output = ["function", "version", "output"]
    requests = Counter(
        "modelfn_version_requests",
        "Answers per model version, live or shadow",
        [*by_version, "status"],
        registry=registry,
    )
    duration = Histogram(
        "modelfn_version_duration_seconds",
        "Time per answer of a model version",
        by_version,
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    rows = Counter("modelfn_shadow_rows", "Rows a shadow version answered, per output", by_output, registry=registry)
    agreeing = Counter(
        "modelfn_shadow_agreeing_rows", "Rows where the shadow's label is the live one's", by_output, registry=registry
    )
    max_abs = Gauge(
        "modelfn_shadow_max_abs_diff", "Largest |shadow - live|, last request", by_output, registry=registry
    )
    cosine = Gauge("modelfn_shadow_cosine", "Mean cosine shadow/live, last request", by_output, registry=registry)
    children: dict[tuple[Any, ...], Any] = {}

    def child(metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: it costs a few µs per call, on every answer."""
        key = (metric, *labels)
        found = children.get(key)
        if found is None:
            found = children[key] = metric.labels(*labels)
        return found

    def record(observation: Observation) -> None:
        if observation.function not in functions:
            return
        labels = (observation.function, observation.version, observation.role)
        status = "dropped" if observation.status == DROPPED else str(observation.status)
        child(requests, *labels, status).inc()
        if observation.status == DROPPED:
            return
        child(duration, *labels).observe(observation.ms / 1000)
        for output, measured in (observation.agreement or {}).items():
            named = (observation.function, observation.version, output)
            if "label_agreement" in measured:
                count = int(measured.get("rows", 0))
                child(rows, *named).inc(count)
                child(agreeing, *named).inc(round(measured["label_agreement"] * count))
            if "max_abs_diff" in measured:
                child(max_abs, *named).set(measured["max_abs_diff"])
            if "cosine" in measured:
                child(cosine, *named).set(measured["cosine"])

    return record
