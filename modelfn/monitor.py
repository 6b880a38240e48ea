"""What the Service does around each model run when a function asks for it: the prediction
cache (`[cache]`) before, drift counting (`[drift]` with a `profile.json`) after. Decided
once per loaded function; a function with neither pays one dictionary lookup.

Numbers leave through a `Reporter`: structured log lines by default (Cloud Functions, Azure),
EMF on Lambda (`handlers.aws`), Prometheus on the server (`modelfn.metrics`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from modelfn.cache import PredictionCache
    from modelfn.codecs import Feeds
    from modelfn.drift import DriftMonitor, DriftReport
    from modelfn.function import ModelFunction, Outputs

log = logging.getLogger("modelfn.metrics")


class Reporter:
    """Where drift windows and cache outcomes go. This one writes each drift window as one
    JSON log line (`fields` carries it for structured formatters) and counts cache outcomes."""

    def __init__(self) -> None:
        self.cache_counts: dict[tuple[str, str], int] = {}

    def drift(self, report: DriftReport) -> None:
        document = {"metric": "drift", **report.to_json()}
        log.info("drift %s", json.dumps(document, separators=(",", ":")), extra={"fields": document})

    def cache(self, function: str, outcome: str) -> None:
        key = (function, outcome)
        self.cache_counts[key] = self.cache_counts.get(key, 0) + 1


class Watched:
    """A function's cache and drift monitor (either may be None)."""

    __slots__ = ("cache", "drift", "monitor", "name")

    def __init__(self, name: str, cache: PredictionCache | None, drift: DriftMonitor | None, monitor: Monitor) -> None:
        self.name = name
        self.cache = cache
        self.drift = drift
        self.monitor = monitor

    @property
    def blocking(self) -> bool:
        """Cache calls go over the network: the async driver makes them off the event loop."""
        return self.cache is not None and self.cache.shared is not None

    def lookup(self, feeds: Feeds) -> tuple[str | None, Outputs | None]:
        if self.cache is None:
            return None, None
        key = self.cache.key(feeds)
        outputs, outcome = self.cache.get(key)
        self.monitor.reporter.cache(self.name, outcome)
        return key, outputs

    def store(self, key: str | None, outputs: Outputs) -> None:
        if key is not None and self.cache is not None:
            self.cache.put(key, outputs)

    def observe(self, feeds: Feeds, outputs: Outputs) -> None:
        if self.drift is not None:
            self.drift.observe(feeds, outputs)

    def run(self, fn: ModelFunction, feeds: Feeds) -> Outputs:
        if self.cache is None and self.drift is not None:  # drift alone: the Lambda warm path, kept short
            ran = fn.run(feeds)
            self.drift.observe(feeds, ran)
            return ran
        key, outputs = self.lookup(feeds)
        if outputs is None:
            outputs = fn.run(feeds)
            self.store(key, outputs)
        self.observe(feeds, outputs)
        return outputs

    async def run_async(self, feeds: Feeds, run: Callable[[], Awaitable[Outputs]]) -> Outputs:
        import asyncio

        blocking = self.blocking
        key, outputs = await asyncio.to_thread(self.lookup, feeds) if blocking else self.lookup(feeds)
        if outputs is None:
            outputs = await run()
            if blocking:
                await asyncio.to_thread(self.store, key, outputs)
            else:
                self.store(key, outputs)
        self.observe(feeds, outputs)
        return outputs


class Monitor:
    """Every function's `Watched` state, built on its first run."""

    def __init__(self, reporter: Reporter | None = None) -> None:
        self.reporter = reporter or Reporter()
        self._watched: dict[ModelFunction, Watched | None] = {}

    def watched(self, fn: ModelFunction) -> Watched | None:
        try:
            return self._watched[fn]
        except KeyError:
            found = self._watched[fn] = self._build(fn)
            return found

    @property
    def monitors(self) -> list[DriftMonitor]:
        return [w.drift for w in self._watched.values() if w is not None and w.drift is not None]

    @property
    def caches(self) -> dict[str, PredictionCache]:
        return {w.name: w.cache for w in self._watched.values() if w is not None and w.cache is not None}

    def close_windows(self) -> None:
        """Report every open drift window now (shutdown)."""
        for monitor in self.monitors:
            monitor.close_window()

    def _build(self, fn: ModelFunction) -> Watched | None:
        spec = fn.spec
        drift = cache = None
        profile = spec.drift_profile()
        if profile is not None:
            drift = self._drift(fn, profile)
        if spec.cache.enabled:
            from modelfn.cache import PredictionCache, model_digest

            cache = PredictionCache(fn.name, model_digest(fn.model_path, spec.model.sha256), spec.cache)
        if drift is None and cache is None:
            return None
        return Watched(fn.name, cache, drift, self)

    def _drift(self, fn: ModelFunction, path: Path) -> DriftMonitor | None:
        from modelfn.drift import DriftMonitor
        from modelfn.profile import Profile

        try:
            profile = Profile.load(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: drift is off, %s is not a usable profile: %s", fn.name, path.name, exc)
            return None
        return DriftMonitor(profile, fn.spec.drift, lambda report: self.reporter.drift(report))
