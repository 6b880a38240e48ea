"""Pub/Sub: a `messagePublished` CloudEvent, or a raw push body on the HTTP function. The
base64 `data` is the request body, the attribute `content-type` its type, the attribute
`function` the model function; the result goes to `triggers.pubsub.output_topic`, or the log."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from handlers.gcp import instance, shadow
from handlers.gcp.settle import Outcome, retry, settle
from modelfn import events
from modelfn.codecs import b64decode
from modelfn.errors import BadRequest
from modelfn.http import HttpResponse, json_text
from modelfn.traffic import KEY_ATTRIBUTE

log = logging.getLogger("modelfn.gcp")

JSON = "application/json"


def _attribute(attributes: dict[str, str], *names: str) -> str | None:
    lowered = {k.lower().replace("_", "-"): v for k, v in attributes.items()}
    return next((lowered[n] for n in names if n in lowered), None)


def _message_id(message: Any) -> str:
    return str(message.get("messageId") or message.get("message_id") or "?") if isinstance(message, dict) else "?"


def publish(topic: str, result: Any, attributes: dict[str, str]) -> str:
    future = instance.publisher().publish(topic, events.encode_result(result), **attributes)
    return str(future.result(timeout=float(os.environ.get("MODELFN_PUBLISH_TIMEOUT_S", "30"))))


def handle_message(message: Any, origin: tuple[str | None, ...] = (), function: str | None = None) -> Outcome:
    """One message. `origin`: the event source or subscription, where a short output topic
    name finds its project."""
    name = function
    try:
        if not isinstance(message, dict):
            raise BadRequest(f"a Pub/Sub message is a JSON object, got {type(message).__name__}")
        attributes = message.get("attributes") or {}
        name = instance.target_function(_attribute(attributes, "function") or function)
        if not message.get("data"):
            raise BadRequest("the message has no data: publish the request body as the message data")
        body = b64decode(message["data"], "message.data")
        if shadow.is_copy(attributes):  # a live function's shadow copy: run it, answer no one
            return shadow.run_message(body, _message_id(message))
        content_type = _attribute(attributes, "content-type", "contenttype") or JSON
        key = _attribute(attributes, KEY_ATTRIBUTE)  # the sticky version key
        result = instance.service().predict(name, body, content_type, key=key)
    except Exception as exc:
        return settle(exc, f"Pub/Sub message {_message_id(message)}", name)

    message_id = _message_id(message)
    trigger = instance.spec(name).triggers.pubsub
    topic = trigger.output_topic if trigger else None
    if not topic:
        log.info("result of Pub/Sub message %s for %s: %s", message_id, name, json_text(result))
        return {"outcome": "logged", "function": name, "message_id": message_id, "result": result}
    if not topic.startswith("projects/"):
        topic = f"projects/{instance.project(*origin)}/topics/{topic}"
    try:
        published = publish(topic, result, {"function": name, "source_message_id": message_id, "content-type": JSON})
    except Exception as exc:
        raise retry(f"Pub/Sub message {message_id}: publishing to {topic}", exc) from exc
    return {
        "outcome": "published",
        "function": name,
        "message_id": message_id,
        "topic": topic,
        "published_id": published,
    }


class PubSubMessage:
    """A `google.cloud.pubsub.topic.v1.messagePublished` CloudEvent."""

    type = "google.cloud.pubsub.topic.v1.messagePublished"

    @classmethod
    def serve(cls, source: str | None, data: Any, function: str | None) -> Outcome:
        document = data if isinstance(data, dict) else {}
        return handle_message(document.get("message"), (source, document.get("subscription")), function)


def push_body(method: str, body: bytes) -> dict[str, Any] | None:
    """A raw push body (`{"message", "subscription"}`), or None for an ordinary request (the cheap test first)."""
    if method != "POST" or b'"subscription"' not in body:
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if isinstance(document, dict) and isinstance(document.get("message"), dict) and "subscription" in document:
        return document
    return None


def handle_push(push: dict[str, Any], function: str | None = None) -> HttpResponse:
    """A push subscription acknowledges on 2xx and delivers again on anything else."""
    try:
        outcome = handle_message(push.get("message"), (push.get("subscription"),), function)
    except events.Retryable as exc:
        return HttpResponse(503, {"error": str(exc), "code": "retry"})
    return HttpResponse(200, outcome)
