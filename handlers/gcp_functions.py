"""Google Cloud Functions (2nd gen), registered with functions-framework.

- `modelfn_http` (HTTP): the routes, JSON and status codes of every provider, through the
  core `Service`; it also takes raw Pub/Sub push bodies (`{"message", "subscription"}`).
- `modelfn_event` (CloudEvent): each event kind in `KINDS` (`handlers/gcp/`) serves the
  CloudEvent type it names: Pub/Sub `messagePublished` and Cloud Storage `object.v1.finalized`.

One retry rule for every event (`modelfn.events.retryable`): a message that can never succeed
(bad base64, malformed JSON, a payload the model refuses, an unknown function, an object
deleted since) is dropped with one WARNING line and acknowledged; a failure that may pass on
a later try (model unavailable, Cloud Storage or Pub/Sub errors, anything unexpected) raises,
so the platform delivers it again. On the push path that is a 200 or a 503.

The model function comes from the Pub/Sub attribute `function`, else `$MODELFN_FUNCTION`, else
the only function under `$MODELFN_FUNCTIONS_DIR`. Running these here, without Google Cloud,
is `handlers.local.gcp`."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Protocol

import functions_framework

from handlers.gcp import instance
from handlers.gcp.pubsub import PubSubMessage, handle_push, push_body
from handlers.gcp.settle import Outcome
from handlers.gcp.storage import StorageObjectFinalized
from modelfn.codecs import parse_json
from modelfn.errors import BadRequest
from modelfn.http import HttpRequest, HttpResponse

if TYPE_CHECKING:
    import flask
    from cloudevents.http import CloudEvent

log = logging.getLogger("modelfn.gcp")


class EventKind(Protocol):
    type: str

    @classmethod
    def serve(cls, source: str | None, data: Any, function: str | None) -> Outcome: ...


KINDS: list[type[EventKind]] = [PubSubMessage, StorageObjectFinalized]
"""A new event source is one more kind here."""


def _event_data(data: Any) -> Any:
    if isinstance(data, bytes | str):
        try:
            return parse_json(data)
        except BadRequest:
            return None
    return data


def handle_event(attributes: dict[str, Any], data: Any, function: str | None = None) -> Outcome:
    kind = attributes.get("type")
    for event_kind in KINDS:
        if event_kind.type == kind:
            return event_kind.serve(attributes.get("source"), _event_data(data), function)
    types = sorted(k.type for k in KINDS)
    log.warning("dropped CloudEvent %s: type %r is not one of %s", attributes.get("id"), kind, types)
    return {
        "outcome": "dropped",
        "function": function,
        "reason": f"unsupported event type {kind!r}",
        "code": "bad_request",
    }


@functions_framework.cloud_event
def modelfn_event(cloud_event: CloudEvent) -> None:
    """CloudEvent function: returns to acknowledge, raises `Retryable` to have the event delivered again."""
    handle_event(dict(cloud_event.get_attributes()), cloud_event.data)


def _flask_response(response: HttpResponse) -> flask.Response:
    import flask

    return flask.Response(response.encoded(), status=response.status, headers=response.headers)


def serve_http(request: flask.Request) -> flask.Response:
    """One HTTP request: a raw Pub/Sub push body, or a route of the core `Service`."""
    # Bodies are read whole: the platform caps them at 32 MB and the Service checks each function's limit.
    body = request.get_data()
    push = push_body(request.method, body)
    if push is not None:
        return _flask_response(handle_push(push))
    return _flask_response(
        instance.service().handle(HttpRequest(request.method, request.path, dict(request.headers), body))
    )


@functions_framework.http
def modelfn_http(request: flask.Request) -> flask.Response:
    """HTTP function: the same routes, JSON and status codes as `modelfn serve`."""
    return serve_http(request)


def _json_logging() -> None:
    """Cloud Logging reads one JSON object per line, with `severity`; INFO lines are otherwise lost."""

    class Structured(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            line = {"severity": record.levelname, "message": record.getMessage(), "logger": record.name}
            # numbers a log-based metric reads (a drift window): top-level fields of jsonPayload
            return json.dumps({**getattr(record, "fields", {}), **line})

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(Structured())
    root = logging.getLogger("modelfn")
    root.addHandler(handler)
    root.setLevel(os.environ.get("MODELFN_LOG_LEVEL", "INFO"))
    root.propagate = False


if os.environ.get("FUNCTION_TARGET") in ("modelfn_http", "modelfn_event"):
    # Under functions-framework: load models at instance start, not in the first request.
    if not logging.getLogger("modelfn").handlers:
        _json_logging()
    instance.service().registry.load_all()
