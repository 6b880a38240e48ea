"""What one Lambda function serves: the model function named by `MODELFN_FUNCTION`, loaded
and warmed at init, the core `Service` under Lambda's 6 MB payload limit, and the
telemetry every trigger reports through."""

from __future__ import annotations

import os
import time
from typing import Any

from handlers.aws.metrics import EmfReporter
from handlers.aws.telemetry import Telemetry
from handlers.aws.telemetry import telemetry as process_telemetry
from handlers.aws.versions import version_metrics
from modelfn import observations
from modelfn.errors import ModelfnError, NotFound
from modelfn.function import ModelFunction
from modelfn.http import MB, api_key
from modelfn.registry import Registry, served_function
from modelfn.service import Service
from modelfn.spec import FunctionSpec

LAMBDA_PAYLOAD_LIMIT = 6 * MB
"""Synchronous invocations carry at most 6 MB of request and 6 MB of response."""


def on_lambda() -> bool:
    return "AWS_LAMBDA_FUNCTION_NAME" in os.environ


class LambdaApp:
    """The registry of functions this Lambda serves and the function events are predicted with."""

    def __init__(self, registry: Registry, served: str | None, telemetry: Telemetry | None = None) -> None:
        self.registry = registry
        self.served = served
        self.telemetry = telemetry or process_telemetry
        self.service = Service(registry, key=api_key(), platform_limit_bytes=LAMBDA_PAYLOAD_LIMIT)
        self.service.monitor.reporter = EmfReporter(self.telemetry)
        observations.subscribe(version_metrics(self.telemetry))
        if os.environ.get("MODELFN_SHADOW_TARGET"):  # the shadow version runs in its own invocation (set by CDK)
            from handlers.aws.shadow import LambdaShadowSink

            self.service.shadow_sink = LambdaShadowSink(os.environ["MODELFN_SHADOW_TARGET"], self.telemetry)
        self.load_ms: float | None = None
        self.load_reported = False
        self.kinds: dict[type[Any], Any] = {}
        """Each event kind's adapter for this app, made on its first event (they hold only the app)."""
        self.tracing = os.environ.get("MODELFN_TRACING", "").lower() in ("1", "true", "yes")

    @classmethod
    def from_env(cls) -> LambdaApp:
        named = os.environ.get("MODELFN_FUNCTION") or None
        registry = Registry.from_dir(names=[named] if named else None)
        return cls(registry, served_function(registry.specs, named))

    def load(self) -> None:
        """Load and warm at init so no request pays for it; a failure is kept and reported
        (503 on HTTP, an error on events) rather than failing the whole init."""
        started = time.perf_counter()
        names = [self.served] if self.served else list(self.registry.specs)
        for name in names:
            try:
                fn = self.registry.load(name)
            except ModelfnError as exc:
                self.telemetry.error("model failed to load", model_function=name, error=exc.message)
                continue
            self.telemetry.info(
                "model loaded", model_function=name, load_ms=round(fn.load_seconds * 1000, 1), providers=fn.providers
            )
        self.load_ms = (time.perf_counter() - started) * 1000

    def function(self) -> ModelFunction:
        """The function events are predicted with."""
        return self.registry.load(self.spec().name)

    def predict(
        self, body: bytes | None = None, content_type: str | None = None, payload: Any = None, key: str | None = None
    ) -> Any:
        """One event's prediction with the served function, through the core pipeline; `key` keeps
        events with the same key on one version."""
        return self.service.predict(self.spec().name, body, content_type, payload, key)

    def spec(self) -> FunctionSpec:
        """The served function's spec, whether or not its model loaded."""
        if self.served is None:
            raise NotFound(
                f"this Lambda serves {sorted(self.registry.specs)}: set MODELFN_FUNCTION to the one events go to"
            )
        return self.registry.specs[self.served]


_current: LambdaApp | None = None


def current() -> LambdaApp:
    """The app, built on first use from MODELFN_FUNCTION and MODELFN_FUNCTIONS_DIR. Not
    re-read per invocation (Lambda's environment is fixed): `reset` after changing them."""
    global _current
    if _current is None:
        _current = LambdaApp.from_env()
    return _current


def reset() -> None:
    """Forget the app: the next invocation builds it from the environment as it is now."""
    global _current
    _current = None
