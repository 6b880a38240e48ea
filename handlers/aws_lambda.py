"""AWS Lambda: one `handler` for every trigger (handler string `handlers.aws_lambda.handler`).

Each event kind is a small class that recognises its event, translates it in and the
outcome out (see `handlers/aws/`); the first kind that recognises an event serves it, the
HTTP kinds tried first, then `event_kinds()`. The function served is `MODELFN_FUNCTION`; it
is loaded and warmed when this module is imported, during Lambda's init, so no request pays
for it. `asgi_handler` serves the core's ASGI server through Mangum instead, at a higher
cold-start cost. Running the handler here, without Lambda, is `handlers.local.aws`."""

from __future__ import annotations

import gc

# The cyclic collector waits while the imports below (NumPy and ONNX Runtime among them) and the
# model load run: its passes over that growing heap were ~4-8 ms of each cold start. `_init`
# starts it again and, on Lambda, freezes what init made (it lives as long as the process).
_collecting = gc.isenabled()
gc.disable()

import functools
import os
import time
from typing import Any

from handlers.aws.app import LambdaApp, current, on_lambda
from handlers.aws.http import HTTP_KINDS
from handlers.aws.kind import EventKind
from handlers.aws.telemetry import route_core_logs, telemetry
from modelfn.errors import ModelfnError


@functools.cache
def event_kinds() -> list[type[EventKind]]:
    """Every trigger but HTTP, in the order they are tried. Imported on the first event no HTTP
    kind recognises: an HTTP function's cold start never loads them (~2 ms of imports)."""
    from handlers.aws.bulk import DistributedMapBatch
    from handlers.aws.messages import DirectInvoke, EventBridgeDetail, SnsNotification
    from handlers.aws.s3 import S3EventBridge, S3Notification, S3TestEvent
    from handlers.aws.shadow import ShadowCopyKind
    from handlers.aws.sqs import SqsBatch

    return [
        S3Notification,
        S3EventBridge,
        S3TestEvent,
        SqsBatch,
        SnsNotification,
        EventBridgeDetail,
        ShadowCopyKind,
        DistributedMapBatch,
        DirectInvoke,  # recognises anything: last
    ]


def kind_of(event: Any) -> type[EventKind]:
    for kind in HTTP_KINDS:
        if kind.recognise(event):
            return kind
    return next(kind for kind in event_kinds() if kind.recognise(event))


def handler(event: Any, context: Any) -> Any:
    started = time.perf_counter_ns()
    app = current()
    if app.load_ms is None:  # a configuration first seen now (local invokes); on Lambda, init loaded it
        app.load()
    cls = kind_of(event)
    kind = app.kinds.get(cls) or app.kinds.setdefault(cls, cls(app))
    telemetry.begin(context, kind.name, kind.function_name(event))
    telemetry.metric("Invocations", 1)
    if not app.load_reported:
        telemetry.metric("ModelLoadTime", app.load_ms or 0.0, "Milliseconds")
        app.load_reported = True
    try:
        if not app.tracing:
            return kind.serve(event, context)
        return _traced(kind, event, context)
    except Exception as exc:
        if "Errors" not in telemetry.metrics:
            telemetry.metric("Errors", 1)
        message = exc.message if isinstance(exc, ModelfnError) else str(exc)
        telemetry.error("invocation failed", error=message, error_type=type(exc).__name__)
        if isinstance(exc, ModelfnError):
            # the error type and message are the report; our frames would only be noise in it
            raise exc.with_traceback(None) from None
        raise
    finally:
        telemetry.milliseconds("Latency", time.perf_counter_ns() - started)
        telemetry.end()


_tracer: Any = None


def _traced(kind: EventKind, event: Any, context: Any) -> Any:
    """With MODELFN_TRACING=1, each invocation is an X-Ray subsegment (Powertools Tracer, imported only then)."""
    global _tracer
    if _tracer is None:
        from aws_lambda_powertools import Tracer

        _tracer = Tracer(service=telemetry.service)
    with _tracer.provider.in_subsegment(f"## {kind.name}") as subsegment:
        subsegment.put_annotation("trigger", kind.name)
        subsegment.put_annotation("model_function", kind.function_name(event) or "")
        subsegment.put_annotation("ColdStart", telemetry.invocation_cold)
        return kind.serve(event, context)


_asgi: tuple[LambdaApp, Any] | None = None


def asgi_handler(event: Any, context: Any) -> Any:
    """The core's ASGI server through Mangum: the same routes as `handler`, with the async
    driver (micro-batching within one invocation's requests). Mangum's imports cost more
    cold start than the plain handler: prefer `handler`."""
    global _asgi
    app = current()
    if _asgi is None or _asgi[0] is not app:
        from mangum import Mangum

        from modelfn.asgi import App

        if app.load_ms is None:
            app.load()
        _asgi = (app, Mangum(App(app.service, preload=False), lifespan="off"))
    return _asgi[1](event, context)


def _before_snapshot() -> None:
    """SnapStart: the snapshot is taken after this, so the model must be loaded and warm in it."""
    from modelfn.session import warm_up

    app = current()
    if app.load_ms is None:
        app.load()
    for fn in app.registry.loaded.values():
        warm_up(fn.session, fn.inputs)
    telemetry.info("ready for snapshot", functions=sorted(app.registry.loaded))


def _after_restore() -> None:
    """Every restored copy starts from the same memory: reseed random generators and drop
    AWS clients (connections, cached credentials) so nothing is shared between copies."""
    import random

    import numpy as np

    from handlers.aws import clients

    random.seed()
    np.random.seed()
    clients.reset()
    telemetry.cold_start = True
    telemetry.info("restored from snapshot")


def _init() -> None:
    try:
        if on_lambda():
            route_core_logs(telemetry)
        if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start":
            try:
                from snapshot_restore_py import register_after_restore, register_before_snapshot
            except ImportError:
                telemetry.warning("SnapStart init without snapshot_restore_py: no snapshot hooks registered")
            else:
                register_before_snapshot(_before_snapshot)
                register_after_restore(_after_restore)
        if on_lambda() or os.environ.get("MODELFN_FUNCTION"):
            current().load()
    finally:
        if _collecting:
            gc.enable()
        if on_lambda():
            gc.freeze()  # out of the collector's way: each full pass would walk it again


_init()
