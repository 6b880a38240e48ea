"""The shadow version in a Lambda invocation of its own: the live invocation sends one
asynchronous invoke (`InvocationType="Event"`) of the shadow function's alias, named by
`MODELFN_SHADOW_TARGET` (the CDK app sets it), carrying the request as it arrived and the live
answer (`modelfn.shadow_copy`); that invocation, the same handler recognising the message as
a `ShadowCopyKind`, runs the shadow version and writes the Shadow* metrics. The live answer
pays for the one call, never for the shadow model.

Live-side metrics, in the invocation's own EMF document: `ShadowCopiesSent`,
`ShadowCopiesTooLarge` (over the async invoke's payload limit, skipped), `ShadowCopiesFailed`
(the invoke refused: throttled, no permission, unreachable) and `ShadowSendLatency`.
Without `MODELFN_SHADOW_TARGET` (a local run) the shadow runs in the process, after the answer."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from handlers.aws.kind import EventKind

if TYPE_CHECKING:
    from handlers.aws.telemetry import Telemetry
    from modelfn.shadow_copy import ShadowCopy

TARGET_ENV = "MODELFN_SHADOW_TARGET"
"""The shadow function's alias ARN (or name:alias) the live function invokes asynchronously."""
ASYNC_PAYLOAD_LIMIT = 256 * 1024
"""The most an asynchronous invoke carries, the documented 256 KB; a bigger copy is skipped."""
MARKER = "modelfn_shadow_copy"  # modelfn.shadow_copy.MARKER, here so recognising costs no import


class LambdaShadowSink:
    """Sends each shadow copy as one asynchronous invoke; never raises into the live answer."""

    def __init__(self, target: str, telemetry: Telemetry) -> None:
        from handlers.aws import clients

        self.target = target
        self.telemetry = telemetry
        clients.client("lambda", fail_fast=True)  # at init: boto3's import and the client are not a request's cost

    def __call__(self, copy: ShadowCopy) -> None:
        from handlers.aws import clients

        started = time.perf_counter()
        try:
            payload = copy.encoded()
        except Exception as exc:  # a payload JSON cannot carry: the copy is lost, the answer is not
            self._lost(copy, "ShadowCopiesFailed", "shadow copy not encodable", exc)
            return
        if len(payload) > ASYNC_PAYLOAD_LIMIT:
            self._lost(
                copy, "ShadowCopiesTooLarge", "shadow copy over the async invoke limit, skipped", size=len(payload)
            )
            return
        try:
            answer = clients.client("lambda", fail_fast=True).invoke(
                FunctionName=self.target, InvocationType="Event", Payload=payload
            )
            # the (empty) streamed body read to its end: only then does the connection go back to
            # the pool; unread, every copy would open a new connection (a TLS handshake on Lambda)
            answer["Payload"].read()
        except Exception as exc:
            self._lost(copy, "ShadowCopiesFailed", "shadow invoke failed", exc)
            return
        self.telemetry.metric("ShadowCopiesSent", 1)
        self.telemetry.metric("ShadowSendLatency", (time.perf_counter() - started) * 1000, "Milliseconds")

    def _lost(
        self, copy: ShadowCopy, metric: str, message: str, exc: BaseException | None = None, **extra: Any
    ) -> None:
        from modelfn.traffic import shadow_dropped

        self.telemetry.metric(metric, 1)
        if exc is not None:
            extra.update(error=str(exc)[:300], error_type=type(exc).__name__)
        self.telemetry.warning(message, target=self.target, shadow_version=copy.version, **extra)
        shadow_dropped(copy.function, copy.version)


class ShadowCopyKind(EventKind):
    """A shadow copy sent by the live function: run the shadow version, record its agreement
    with the live answer; the invocation is asynchronous, so nobody receives an answer."""

    name = "shadow-copy"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        return isinstance(event, dict) and MARKER in event

    def function_name(self, event: Any) -> str | None:
        return str(event.get("function") or "") or self.app.served

    def serve(self, event: Any, context: Any) -> Any:
        from modelfn.shadow_copy import ShadowCopy, run_copy

        run_copy(self.app.registry, ShadowCopy.from_message(event))
        return None
