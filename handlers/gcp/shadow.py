"""The shadow version in an invocation of its own on Cloud Functions: the live function publishes
each sampled copy (`modelfn.shadow_copy`: the request as it arrived and the live answer) to the
Pub/Sub topic named by MODELFN_SHADOW_TOPIC, with the attribute `modelfn-shadow-copy`; a
function subscribed to that topic (the same code: `modelfn_event` on a Pub/Sub trigger, or
`modelfn_http` behind a push subscription) recognises the attribute, runs the shadow and logs
its agreement (`modelfn.versions` lines). Unset, the shadow runs in-process after the answer.

The live answer waits for the publish to be acknowledged (Cloud Functions may throttle the CPU
once the answer is sent, so a background publish could stall): one Pub/Sub round trip. A copy
over Pub/Sub's 10 MB message limit, or a publish that fails, is logged and counted as dropped;
the live answer never fails for it."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from handlers.gcp import instance

if TYPE_CHECKING:
    from modelfn.shadow_copy import ShadowCopy

log = logging.getLogger("modelfn.gcp")

TOPIC_ENV = "MODELFN_SHADOW_TOPIC"
ATTRIBUTE = "modelfn-shadow-copy"
MESSAGE_LIMIT = 10 * 1000 * 1000
"""Pub/Sub's largest message (data and attributes)."""


class PubSubShadowSink:
    """Publishes each shadow copy to the shadow topic; never raises into the live answer."""

    def __init__(self, topic: str) -> None:
        if not topic.startswith("projects/"):
            topic = f"projects/{instance.project()}/topics/{topic}"
        self.topic = topic

    def __call__(self, copy: ShadowCopy) -> None:
        try:
            data = copy.encoded()
            if len(data) > MESSAGE_LIMIT:
                raise ValueError(f"{len(data)} bytes, over Pub/Sub's message limit")
            future = instance.publisher().publish(self.topic, data, **{ATTRIBUTE: "1", "function": copy.function})
            future.result(timeout=float(os.environ.get("MODELFN_SHADOW_PUBLISH_TIMEOUT_S", "5")))
        except Exception as exc:
            dropped(copy, f"shadow copy not published to {self.topic}", exc)


def dropped(copy: ShadowCopy, message: str, exc: BaseException) -> None:
    from modelfn.traffic import shadow_dropped

    log.warning("%s: %s: %s", message, type(exc).__name__, str(exc)[:300])
    shadow_dropped(copy.function, copy.version)


def is_copy(attributes: dict[str, Any]) -> bool:
    return ATTRIBUTE in attributes


def run_message(data: bytes, message_id: str) -> dict[str, Any]:
    """The subscriber's side: run the shadow on the copy; nothing is published or answered."""
    from modelfn.codecs import parse_json
    from modelfn.shadow_copy import ShadowCopy, run_copy

    copy = ShadowCopy.from_message(parse_json(data))
    run_copy(instance.service().registry, copy)
    return {"outcome": "shadow", "function": copy.function, "version": copy.version, "message_id": message_id}
