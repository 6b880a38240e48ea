"""Google Cloud Functions (2nd gen) adapter, registered with functions-framework.

- `modelfn_http` (HTTP): the local server's routes, JSON and status codes, through
  `modelfn.http.Service`; it also takes raw Pub/Sub push bodies (`{"message", "subscription"}`).
- `modelfn_event` (CloudEvent): Pub/Sub `messagePublished` (result to `triggers.pubsub.output_topic`,
  or logged) and Cloud Storage `object.v1.finalized` (result written under
  `triggers.gcs.output_prefix`; objects there, or outside `triggers.gcs.prefix`, are skipped).

Retry semantics, one rule for every event: a message that can never succeed (bad base64, malformed
JSON, a payload the model refuses, an unknown function, an object deleted since) is *dropped*: one
WARNING log line, and a normal return that acknowledges it. A failure that may pass on a later try
(model unavailable, Cloud Storage or Pub/Sub errors, anything unexpected) *raises*, so the platform
redelivers (deploy event functions with `--retry`; give the subscription a dead-letter topic).
On the push path the same split is a 200 (acknowledged) or a 503 (redelivered).

The model function comes from the Pub/Sub attribute `function`, else `$MODELFN_FUNCTION`, else the
only function under `$MODELFN_FUNCTIONS_DIR`."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import functions_framework

from modelfn.codecs import b64decode, parse_json
from modelfn.errors import BadRequest, ModelfnError, ModelUnavailable, NotFound
from modelfn.http import MB, HttpRequest, HttpResponse, Service, api_key
from modelfn.registry import Registry
from modelfn.spec import FunctionSpec, GcsTrigger

if TYPE_CHECKING:
    import flask
    from cloudevents.http import CloudEvent

log = logging.getLogger("modelfn.gcp")

PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
GCS_FINALIZED = "google.cloud.storage.object.v1.finalized"
JSON = "application/json"
# Cloud Functions refuses larger HTTP bodies before the function runs.
PLATFORM_MAX_BODY_MB = 32.0

Outcome = dict[str, Any]


class Retryable(ModelfnError):
    """Raised out of an event function so the platform redelivers the event."""

    status = 503
    code = "retry"


@dataclass
class _Instance:
    """What one function instance keeps between invocations."""

    registry: Registry
    service: Service


_lock = threading.Lock()
_instances: dict[tuple[str | None, str | None], _Instance] = {}


def instance() -> _Instance:
    """The registry for this configuration, built once (specs only; models load on first use)."""
    key = (os.environ.get("MODELFN_FUNCTIONS_DIR"), os.environ.get("MODELFN_FUNCTION"))
    with _lock:
        if key not in _instances:
            registry = Registry.from_dir(names=[key[1]] if key[1] else None)
            configured = float(os.environ.get("MODELFN_MAX_BODY_MB") or 0)
            limit = configured or min(
                max((s.io.max_body_mb for s in registry.specs.values()), default=PLATFORM_MAX_BODY_MB),
                PLATFORM_MAX_BODY_MB,
            )
            _instances[key] = _Instance(registry, Service(registry, int(limit * MB), api_key()))
        return _instances[key]


def target_function(requested: str | None = None) -> str:
    """Which model function an event is for."""
    name = requested or os.environ.get("MODELFN_FUNCTION")
    if name:
        return name
    names = sorted(instance().registry.specs)
    if len(names) == 1:
        return names[0]
    raise NotFound(f"cannot tell which function this event is for among {names}: set MODELFN_FUNCTION")


def _spec(name: str) -> FunctionSpec:
    specs = instance().registry.specs
    if name not in specs:
        raise NotFound(f"unknown function {name!r}; this instance has {sorted(specs)}")
    return specs[name]


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ModelUnavailable | Retryable):
        return True
    if isinstance(exc, ModelfnError):
        return False  # the input or the configuration, not the moment: another try gives the same answer
    return type(exc).__name__ != "NotFound"  # google.api_core NotFound: the object is gone


def _settle(exc: BaseException, what: str, function: str | None) -> Outcome:
    """Drop a message that can never succeed (log, acknowledge); raise for one that may."""
    message = exc.message if isinstance(exc, ModelfnError) else f"{type(exc).__name__}: {exc}"
    if _retryable(exc):
        log.error("retrying %s for %s: %s", what, function, message)
        raise Retryable(f"{what}: {message}") from exc
    code = exc.code if isinstance(exc, ModelfnError) else "not_found"
    log.warning("dropped %s for %s: %s (%s; not retried)", what, function, message, code)
    return {"outcome": "dropped", "function": function, "reason": message, "code": code}


def _attribute(attributes: dict[str, str], *names: str) -> str | None:
    lowered = {k.lower().replace("_", "-"): v for k, v in attributes.items()}
    return next((lowered[n] for n in names if n in lowered), None)


def _project(*paths: str | None) -> str | None:
    """The project from a `projects/P/...` resource name, else the environment."""
    for path in paths:
        parts = (path or "").split("/")
        if "projects" in parts and parts.index("projects") + 1 < len(parts):
            return parts[parts.index("projects") + 1]
    return os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCP_PROJECT")


@functools.cache
def _publisher(emulator: str | None) -> Any:
    from google.cloud import pubsub_v1  # only the publishing path pays for gRPC

    return pubsub_v1.PublisherClient()


def publish(topic: str, result: Any, attributes: dict[str, str]) -> str:
    data = json.dumps(result, separators=(",", ":"), allow_nan=False).encode()
    future = _publisher(os.environ.get("PUBSUB_EMULATOR_HOST")).publish(topic, data, **attributes)
    return str(future.result(timeout=float(os.environ.get("MODELFN_PUBLISH_TIMEOUT_S", "30"))))


def handle_pubsub(message: Any, origin: tuple[str | None, ...] = (), function: str | None = None) -> Outcome:
    """One Pub/Sub message: base64 `data` is the request body, attribute `content-type` its type.
    `origin`: the event source or subscription, where a short output topic name finds its project."""
    name = function
    try:
        if not isinstance(message, dict):
            raise BadRequest(f"a Pub/Sub message is a JSON object, got {type(message).__name__}")
        attributes = message.get("attributes") or {}
        message_id = str(message.get("messageId") or message.get("message_id") or "")
        name = target_function(_attribute(attributes, "function") or function)
        if not message.get("data"):
            raise BadRequest("the message has no data: publish the request body as the message data")
        body = b64decode(message["data"], "message.data")
        fn = instance().registry.load(name)
        result = fn.predict(body, _attribute(attributes, "content-type", "contenttype") or JSON)
    except Exception as exc:
        return _settle(exc, f"Pub/Sub message {_message_id(message)}", name)

    trigger = fn.spec.triggers.pubsub
    topic = trigger.output_topic if trigger else None
    if not topic:
        log.info("result of Pub/Sub message %s for %s: %s", message_id, name, json.dumps(result, allow_nan=False))
        return {"outcome": "logged", "function": name, "message_id": message_id, "result": result}
    if not topic.startswith("projects/"):
        topic = f"projects/{_project(*origin)}/topics/{topic}"
    try:
        published = publish(topic, result, {"function": name, "source_message_id": message_id, "content-type": JSON})
    except Exception as exc:
        log.error("retrying Pub/Sub message %s: publishing to %s failed: %s", message_id, topic, exc)
        raise Retryable(f"publishing to {topic} failed: {exc}") from exc
    return {
        "outcome": "published",
        "function": name,
        "message_id": message_id,
        "topic": topic,
        "published_id": published,
    }


def _message_id(message: Any) -> str:
    return str(message.get("messageId") or message.get("message_id") or "?") if isinstance(message, dict) else "?"


@functools.cache
def _storage(emulator: str | None) -> Any:
    from google.cloud import storage  # type: ignore[attr-defined,unused-ignore]

    return storage.Client()


def output_name(name: str, trigger: GcsTrigger) -> str:
    """`incoming/a/b.json` -> `predictions/a/b.json.json`: the path below the prefix is kept."""
    return trigger.output_prefix + name.removeprefix(trigger.prefix) + ".json"


def handle_gcs(data: Any, function: str | None = None) -> Outcome:
    """One finalized object: read it, predict, write the result under the output prefix."""
    name = function
    try:
        if not isinstance(data, dict) or not data.get("bucket") or not data.get("name"):
            raise BadRequest("a Cloud Storage event needs data.bucket and data.name")
        bucket, key = str(data["bucket"]), str(data["name"])
        name = target_function(function)
        trigger = _spec(name).triggers.gcs or GcsTrigger()
        skip = _skip_reason(bucket, key, trigger)
        if skip:
            log.info("skipped gs://%s/%s: %s", bucket, key, skip)
            return {"outcome": "skipped", "function": name, "object": f"gs://{bucket}/{key}", "reason": skip}
        fn = instance().registry.load(name)
        body = _storage(os.environ.get("STORAGE_EMULATOR_HOST")).bucket(bucket).blob(key).download_as_bytes()
        result = fn.predict(body, data.get("contentType") or JSON)
    except Exception as exc:
        return _settle(exc, f"object {_object(data)}", name)

    out = output_name(key, trigger)
    try:
        blob = _storage(os.environ.get("STORAGE_EMULATOR_HOST")).bucket(bucket).blob(out)
        blob.upload_from_string(json.dumps(result, separators=(",", ":"), allow_nan=False), content_type=JSON)
    except Exception as exc:
        log.error("retrying object gs://%s/%s: writing gs://%s/%s failed: %s", bucket, key, bucket, out, exc)
        raise Retryable(f"writing gs://{bucket}/{out} failed: {exc}") from exc
    log.info("wrote gs://%s/%s for gs://%s/%s", bucket, out, bucket, key)
    return {"outcome": "written", "function": name, "object": f"gs://{bucket}/{key}", "output": f"gs://{bucket}/{out}"}


def _skip_reason(bucket: str, key: str, trigger: GcsTrigger) -> str | None:
    # Eventarc filters Cloud Storage events by bucket only, so prefixes are checked here;
    # the output prefix first, so a result can never trigger another prediction.
    if key.startswith(trigger.output_prefix):
        return f"under the output prefix {trigger.output_prefix!r} (a result, not a request)"
    if trigger.prefix and not key.startswith(trigger.prefix):
        return f"outside the input prefix {trigger.prefix!r}"
    if trigger.bucket and bucket != trigger.bucket:
        return f"bucket is not {trigger.bucket!r}"
    if key.endswith("/"):
        return "a folder placeholder"
    return None


def _object(data: Any) -> str:
    return f"gs://{data.get('bucket')}/{data.get('name')}" if isinstance(data, dict) else "?"


def _event_data(data: Any) -> Any:
    if isinstance(data, bytes | str):
        try:
            return parse_json(data)
        except BadRequest:
            return None
    return data


def _pubsub_event(source: str | None, data: Any, function: str | None) -> Outcome:
    document = data if isinstance(data, dict) else {}
    return handle_pubsub(document.get("message"), (source, document.get("subscription")), function)


def _gcs_event(source: str | None, data: Any, function: str | None) -> Outcome:
    return handle_gcs(data, function)


# CloudEvent type -> handler; a new event source is one more entry.
EVENT_HANDLERS: dict[str, Callable[[str | None, Any, str | None], Outcome]] = {
    PUBSUB_PUBLISHED: _pubsub_event,
    GCS_FINALIZED: _gcs_event,
}


def handle_event(attributes: dict[str, Any], data: Any, function: str | None = None) -> Outcome:
    kind = attributes.get("type")
    handler = EVENT_HANDLERS.get(str(kind))
    if handler is not None:
        return handler(attributes.get("source"), _event_data(data), function)
    log.warning("dropped CloudEvent %s: type %r is not one of %s", attributes.get("id"), kind, sorted(EVENT_HANDLERS))
    reason = f"unsupported event type {kind!r}"
    return {"outcome": "dropped", "function": function, "reason": reason, "code": "bad_request"}


@functions_framework.cloud_event
def modelfn_event(cloud_event: CloudEvent) -> None:
    """CloudEvent function: returns to acknowledge, raises `Retryable` to have the event redelivered."""
    handle_event(dict(cloud_event.get_attributes()), cloud_event.data)


def _push_message(request: flask.Request, body: bytes) -> dict[str, Any] | None:
    """A raw Pub/Sub push body, or None for an ordinary request (the cheap test first)."""
    if request.method != "POST" or b'"subscription"' not in body:
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if isinstance(document, dict) and isinstance(document.get("message"), dict) and "subscription" in document:
        return document
    return None


def _flask_response(response: HttpResponse) -> flask.Response:
    import flask

    return flask.Response(response.encoded(), status=response.status, headers=response.headers)


def serve_http(request: flask.Request) -> flask.Response:
    """One HTTP request: a raw Pub/Sub push body, or a route of `modelfn.http.Service`."""
    # Bodies are read whole: the platform caps them at 32 MB and the service checks its own limit.
    body = request.get_data()
    push = _push_message(request, body)
    if push is not None:
        return _flask_response(handle_push(push))
    return _flask_response(
        instance().service.handle(HttpRequest(request.method, request.path, dict(request.headers), body))
    )


@functions_framework.http
def modelfn_http(request: flask.Request) -> flask.Response:
    """HTTP function: the same routes, JSON and status codes as `modelfn serve`."""
    return serve_http(request)


def handle_push(push: dict[str, Any], function: str | None = None) -> HttpResponse:
    """A push subscription acknowledges on 2xx and redelivers on anything else."""
    try:
        outcome = handle_pubsub(push.get("message"), (push.get("subscription"),), function)
    except Retryable as exc:
        return HttpResponse(503, {"error": str(exc), "code": "retry"})
    return HttpResponse(200, outcome)


def _invoke_http(function: str, event: dict[str, Any]) -> Outcome:
    import flask

    body = event.get("body", b"")
    headers = {k.lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    if not isinstance(body, bytes | str):
        body = json.dumps(body)
        headers.setdefault("content-type", JSON)
    path = event.get("path") or f"/functions/{function}"
    with flask.Flask(__name__).test_request_context(
        path, method=event.get("method", "POST"), headers=headers, data=body
    ):
        response = serve_http(flask.request)
    return {
        "status": response.status_code,
        "headers": {k.lower(): v for k, v in response.headers.items()},
        "body": json.loads(response.get_data()),
    }


def local_invoke(function_name: str, event: dict[str, Any]) -> Any:
    """Run the function an event file is for (see events/gcp/): a CloudEvent (`specversion`), a raw
    Pub/Sub push body (`message` + `subscription`) or an HTTP request (`method`, `path`, ...).
    It runs as a deployment of `function_name` would: that function alone, loaded at start."""
    with _deployed(function_name):
        instance().registry.load_all()
        return _run_event(function_name, event)


@contextmanager
def _deployed(function_name: str) -> Iterator[None]:
    previous = os.environ.get("MODELFN_FUNCTION")
    os.environ["MODELFN_FUNCTION"] = function_name
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MODELFN_FUNCTION"]
        else:
            os.environ["MODELFN_FUNCTION"] = previous


def _run_event(function_name: str, event: dict[str, Any]) -> Any:
    runners: list[tuple[Callable[[dict[str, Any]], bool], Callable[[], Any]]] = [
        (lambda e: "specversion" in e, lambda: handle_event(event, _cloud_event_data(event), function_name)),
        (lambda e: "subscription" in e and "message" in e, lambda: _reply(handle_push(event, function_name))),
        (lambda e: "method" in e or "path" in e, lambda: _invoke_http(function_name, event)),
    ]
    for recognise, run in runners:
        if recognise(event):
            return run()
    raise BadRequest("not a CloudEvent, a Pub/Sub push body or an HTTP request description; see events/gcp/")


def _reply(response: HttpResponse) -> dict[str, Any]:
    return {"status": response.status, "body": response.body}


def _cloud_event_data(event: dict[str, Any]) -> Any:
    if "data_base64" in event:
        return b64decode(event["data_base64"], "data_base64")
    return event.get("data")


def _json_logging() -> None:
    """Cloud Logging reads one JSON object per line, with `severity`; INFO lines are otherwise lost."""

    class Structured(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps({"severity": record.levelname, "message": record.getMessage(), "logger": record.name})

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
    instance().registry.load_all()
