"""Azure Functions adapter on the Python v2 programming model: `build_app()` turns one
`function.toml` into a `FunctionApp` with an HTTP trigger (the local server's routes, JSON
and status codes, through `modelfn.http.Service`), a Blob trigger and a Queue trigger, so a
deployed `function_app.py` is two lines:

    from handlers.azure_functions import build_app
    app = build_app("breast-cancer")

No `from __future__ import annotations` here: the Python worker reads the annotations of the
registered functions to pick its converters (`func.InputStream`, `func.Out[str]`), and real
objects are simpler for it than strings to resolve."""

import asyncio
import dataclasses
import functools
import inspect
import json
import logging
import mimetypes
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# The worker indexes the app's decorators at start-up, so this import cannot be lazy.
import azure.functions as func
from azure.functions.decorators.core import BindingDirection
from azure.functions.decorators.function_app import Function
from azure.functions.queue import QueueMessage

from modelfn.errors import ModelfnError, NotFound, SpecError, error_body
from modelfn.http import MB, HttpRequest, HttpResponse, Service, api_key, check_size
from modelfn.registry import Registry
from modelfn.spec import BlobTrigger, FunctionSpec, HttpTrigger, QueueTrigger, discover, functions_dir, load_spec

log = logging.getLogger("modelfn")

App = func.FunctionApp | func.AsgiFunctionApp

TRIGGERS = ("http", "blob", "queue")
HTTP_MODES = ("direct", "asgi")
DEFAULTS: dict[str, Callable[[], Any]] = {"http": HttpTrigger, "blob": BlobTrigger, "queue": QueueTrigger}
AUTH_LEVELS = {"iam": func.AuthLevel.FUNCTION, "none": func.AuthLevel.ANONYMOUS}
# The HTTP trigger takes every method so that the Service, not the host, answers 405 as the local server does.
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
SNIFFED = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)
# Azure's front end refuses HTTP request bodies over 100 MB before the function runs.
PLATFORM_MAX_BODY_MB = 100.0


class ServedFunction:
    """One function as the Azure triggers see it: the registry that loads it once per
    worker process and the operations each trigger runs."""

    def __init__(self, spec: FunctionSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.registry = Registry([spec])
        self.service = Service(self.registry, int(body_limit_mb(spec) * MB), api_key())

    def http(self, req: func.HttpRequest) -> func.HttpResponse:
        return to_func_response(self.service.handle(to_http_request(req)))

    def blob(self, blob: func.InputStream) -> dict[str, Any]:
        """The document written for one blob: the prediction, or why the blob cannot be
        predicted. Retrying cannot change a blob's content, so a bad blob gets an error
        document rather than five retries; a server-side failure raises so the host retries."""
        data = blob.read()
        where = {"function": self.name, "blob": blob.name}
        try:
            check_size(data, int(self.spec.io.max_body_mb * MB))  # a blob is not an HTTP body: no 100 MB cap
            result = self.registry.load(self.name).predict(data, blob_content_type(blob.name, data))
        except ModelfnError as exc:
            if exc.status >= 500:
                raise
            status, body = error_body(exc)
            log.warning("blob %s cannot be predicted (%s): %s; wrote an error document", blob.name, status, exc.message)
            return {**where, "status": status, **body}
        return {**where, "result": result}

    def message(self, msg: func.QueueMessage, queue: str) -> dict[str, Any]:
        """The result message for one queue message. A message that cannot be predicted
        raises: the host makes it visible again and, after `maxDequeueCount` attempts, moves
        it to `<queue>-poison`, so nothing is dropped silently."""
        try:
            result = self.registry.load(self.name).predict(msg.get_body(), "application/json")
        except ModelfnError as exc:
            kind = "is malformed" if exc.status < 500 else "failed on the server side"
            log.error(
                "queue message %s on %s %s (%s, attempt %s): %s; the host retries it up to host.json "
                "extensions.queues.maxDequeueCount times (default 5), then moves it to %s-poison",
                msg.id,
                queue,
                kind,
                exc.code,
                msg.dequeue_count,
                exc.message,
                queue,
            )
            raise
        return {"function": self.name, "id": msg.id, "result": result}


def body_limit_mb(spec: FunctionSpec) -> float:
    """`$MODELFN_MAX_BODY_MB`, else the spec's `io.max_body_mb` up to what Azure carries."""
    configured = float(os.environ.get("MODELFN_MAX_BODY_MB") or 0)
    return configured or min(spec.io.max_body_mb, PLATFORM_MAX_BODY_MB)


def to_http_request(req: func.HttpRequest) -> HttpRequest:
    """The route parameter is the path after the host's route prefix (none in our host.json,
    `api` by default), so the same routes answer whatever the prefix is."""
    params = req.route_params
    path = params.get("path", params.get("route")) if params else None
    if path is None:
        path = urlparse(req.url).path
    return HttpRequest(req.method, path, dict(req.headers), req.get_body() or b"")


def to_func_response(response: HttpResponse) -> func.HttpResponse:
    return func.HttpResponse(
        response.encoded(), status_code=response.status, headers=response.headers, mimetype="application/json"
    )


def blob_content_type(name: str | None, data: bytes) -> str:
    """A blob has no request headers: its name's extension says what it holds, else its first bytes."""
    guessed, _ = mimetypes.guess_type(name or "")
    if guessed:
        return guessed
    for magic, kind in SNIFFED:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.lstrip()[:1] in (b"{", b"["):
        return "application/json"
    return "application/octet-stream"


def _binding_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"\{([^{}]+)\}", pattern)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+)" for i, p in enumerate(parts))
    return re.compile(regex)


def blob_bindings(path: str, blob_name: str) -> dict[str, str]:
    """The binding data the host extracts from a blob path, e.g. `incoming/{name}` and
    `incoming/a.json` give `{"name": "a.json"}`."""
    match = _binding_regex(path).fullmatch(blob_name)
    if match is None:
        raise NotFound(f"blob {blob_name!r} does not match the trigger path {path!r}")
    return match.groupdict()


def output_blob_path(trigger: BlobTrigger, blob_name: str) -> str:
    """Where the host's output binding writes the result of `blob_name`."""
    values = blob_bindings(trigger.path, blob_name)
    return re.sub(r"\{([^{}]+)\}", lambda m: values.get(m.group(1), m.group(0)), trigger.output_path)


def resolve_spec(function_name: str | None = None, root: Path | None = None) -> FunctionSpec:
    """The function to serve: the argument, else `$MODELFN_FUNCTION`, else the only one there is."""
    found = discover(root or functions_dir())
    name = function_name or os.environ.get("MODELFN_FUNCTION")
    if name is None:
        if len(found) != 1:
            raise SpecError(f"set MODELFN_FUNCTION to one of {sorted(found)} (or pass build_app(name))")
        name = next(iter(found))
    if name not in found:
        raise NotFound(f"no function named {name!r} under {root or functions_dir()}; found {sorted(found)}")
    return load_spec(found[name])


def with_triggers(spec: FunctionSpec, kinds: Iterable[str]) -> FunctionSpec:
    """The spec with each trigger in `kinds` switched on at its defaults where the spec has none."""
    added = {k: DEFAULTS[k]() for k in kinds if getattr(spec.triggers, k) is None}
    if not added:
        return spec
    log.warning(
        "%s declares no [triggers.%s]; running it with the defaults here (a deployed app registers only the "
        "triggers function.toml declares)",
        spec.name,
        "], [triggers.".join(added),
    )
    return dataclasses.replace(spec, triggers=dataclasses.replace(spec.triggers, **added))


def function_id(spec: FunctionSpec, trigger: str) -> str:
    return f"{spec.name.replace('-', '_')}_{trigger}"


def _register_http(app: App, served: ServedFunction, http: HttpTrigger) -> None:
    @app.function_name(function_id(served.spec, "http"))
    @app.route(route="{*path}", methods=METHODS, auth_level=AUTH_LEVELS[http.auth])
    def http_trigger(req: func.HttpRequest) -> func.HttpResponse:
        return served.http(req)


def blob_source() -> func.BlobSource | None:
    """`MODELFN_AZURE_BLOB_SOURCE=EventGrid` for plans without the polling blob trigger (Flex Consumption)."""
    wanted = os.environ.get("MODELFN_AZURE_BLOB_SOURCE", "").lower()
    return func.BlobSource.EVENT_GRID if wanted == "eventgrid" else None


def _register_blob(app: App, served: ServedFunction, blob: BlobTrigger) -> None:
    @app.function_name(function_id(served.spec, "blob"))
    @app.blob_trigger(arg_name="blob", path=blob.path, connection=blob.connection, source=blob_source())
    @app.blob_output(arg_name="result", path=blob.output_path, connection=blob.connection)
    def blob_trigger(blob: func.InputStream, result: func.Out[str]) -> None:
        result.set(json.dumps(served.blob(blob), allow_nan=False))


def _register_queue(app: App, served: ServedFunction, queue: QueueTrigger) -> None:
    @app.function_name(function_id(served.spec, "queue"))
    @app.queue_trigger(arg_name="msg", queue_name=queue.queue, connection=queue.connection)
    @app.queue_output(arg_name="result", queue_name=queue.output_queue, connection=queue.connection)
    def queue_trigger(msg: func.QueueMessage, result: func.Out[str]) -> None:
        result.set(json.dumps(served.message(msg, queue.queue), allow_nan=False))


def _asgi_app(served: ServedFunction, http: HttpTrigger, preload: bool) -> App:
    """The FastAPI app behind `AsgiMiddleware`: micro-batching and /docs, at the price of
    importing FastAPI at start-up (the README's Azure section has the figures)."""
    try:
        from handlers.cloud_run import create_app
    except ImportError as exc:
        raise SpecError(f"MODELFN_AZURE_HTTP=asgi needs FastAPI ({exc}): add fastapi to requirements.txt") from None

    asgi = create_app(served.registry, max_body_mb=served.service.max_body_bytes / MB, preload=preload)
    return AsgiApp(asgi, AUTH_LEVELS[http.auth], function_id(served.spec, "http"))


class AsgiApp(func.AsgiFunctionApp):
    """`AsgiFunctionApp` whose lifespan shutdown is an explicit `close()`: the library's
    `__del__` runs it on a fresh event loop, which waits forever for the app's loop."""

    def __del__(self) -> None:
        pass

    def close(self) -> None:
        if self.startup_task_done:
            asyncio.run_coroutine_threadsafe(self.middleware.notify_shutdown(), worker_loop()).result(timeout=30)
            self.startup_task_done = False


def close_app(app: App) -> None:
    """Release what serving left running (the ASGI app's lifespan); a no-op for the direct app."""
    if isinstance(app, AsgiApp):
        app.close()


def build_app(
    function_name: str | None = None,
    *,
    root: Path | None = None,
    http_mode: str | None = None,
    enable: Iterable[str] = (),
    preload: bool = True,
) -> App:
    """The `FunctionApp` for one function, with the triggers its `function.toml` declares
    (plus `enable`, at their defaults). The model loads here, once per worker process, unless
    `preload` is false; a model that fails to load is reported by readiness, not at indexing.

    `http_mode` (else `$MODELFN_AZURE_HTTP`): `direct` (default) calls the Service from the
    trigger; `asgi` serves the FastAPI app through `AsgiMiddleware`."""
    spec = with_triggers(resolve_spec(function_name, root), enable)
    triggers = spec.triggers
    if not any(getattr(triggers, kind) for kind in TRIGGERS):
        raise SpecError(f"{spec.name}: no trigger Azure Functions serves; declare one of {', '.join(TRIGGERS)}")
    mode = http_mode or os.environ.get("MODELFN_AZURE_HTTP", "direct")
    if mode not in HTTP_MODES:
        raise SpecError(f"MODELFN_AZURE_HTTP={mode!r}: expected one of {HTTP_MODES}")
    served = ServedFunction(spec)
    if preload:
        served.registry.load_all()
    if triggers.http is not None and mode == "asgi":
        app: App = _asgi_app(served, triggers.http, preload)
    else:
        app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
        if triggers.http is not None:
            _register_http(app, served, triggers.http)
    if triggers.blob is not None:
        _register_blob(app, served, triggers.blob)
    if triggers.queue is not None:
        _register_queue(app, served, triggers.queue)
    return app


class OutputBinding(func.Out[str]):
    """What the host hands a function for an output binding: a slot it sets once, which
    the host then writes to storage. Local invocation and the tests read it instead."""

    def __init__(self) -> None:
        self.value: str | None = None

    def set(self, val: str) -> None:
        self.value = val

    def get(self) -> str | None:  # type: ignore[override]  # None until set, as the worker's own Out
        return self.value


def trigger_type(function: Function) -> str:
    trigger = function.get_trigger()
    assert trigger is not None, "the library refuses to build a function without a trigger"
    return str(trigger.type).removesuffix("Trigger")


def invoke(function: Function, trigger_value: Any) -> tuple[Any, dict[str, OutputBinding]]:
    """Call a registered function as the worker does: the trigger and each output binding by
    its argument name; returns the return value and the output bindings it set."""
    user_function = function.get_user_function()
    trigger = function.get_trigger()
    assert trigger is not None, "the library refuses to build a function without a trigger"
    outputs = {
        b.name: OutputBinding()
        for b in function.get_bindings()
        if b is not trigger and b.direction == BindingDirection.OUT.value and b.name != "$return"
    }
    kwargs: dict[str, Any] = {trigger.name: trigger_value, **outputs}
    if "context" in inspect.signature(user_function).parameters:
        kwargs["context"] = None
    result = user_function(**kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run_coroutine_threadsafe(result, worker_loop()).result()  # type: ignore[arg-type]
    return result, outputs


@functools.cache
def worker_loop() -> asyncio.AbstractEventLoop:
    """One event loop for the process, as the worker keeps: the ASGI app's micro-batchers live on it."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="azure-worker-loop", daemon=True).start()
    return loop


def _body_bytes(event: dict[str, Any], key: str) -> bytes:
    """`key` as JSON (a string is sent as it is), or `<key>_base64` for binary content."""
    import base64

    if f"{key}_base64" in event:
        return base64.b64decode(event[f"{key}_base64"])
    value = event.get(key)
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


def http_event(event: dict[str, Any]) -> func.HttpRequest:
    """events/azure/http.json: method, url (or route), headers, body."""
    url = event.get("url") or "http://localhost:7071/" + str(event.get("route", "")).lstrip("/")
    path = urlparse(url).path.strip("/")
    headers = {k.lower(): v for k, v in event.get("headers", {}).items()}
    body = _body_bytes(event, "body")
    if body and "content-type" not in headers:
        headers["content-type"] = "application/json"
    return func.HttpRequest(
        str(event.get("method", "POST")), url, headers=headers, route_params={"path": path}, body=body
    )


def blob_event(event: dict[str, Any]) -> func.InputStream:
    """events/azure/blob.json: name (container/blob), uri, content (JSON) or content_base64."""
    data = _body_bytes(event, "content")
    return func.blob.InputStream(data=data, name=event["name"], uri=event.get("uri"), length=len(data))


def queue_event(event: dict[str, Any]) -> QueueMessage:
    """events/azure/queue.json: id, body (JSON, or a string sent as it is), dequeue_count."""
    return QueueMessage(
        id=event.get("id"), body=_body_bytes(event, "body"), dequeue_count=event.get("dequeue_count", 1)
    )


def event_kind(event: dict[str, Any]) -> str:
    if event.get("trigger") in TRIGGERS:
        return str(event["trigger"])
    if "method" in event or "url" in event or "route" in event:
        return "http"
    if "uri" in event or "content" in event or "content_base64" in event:
        return "blob"
    if "dequeue_count" in event or "body" in event or "body_base64" in event:
        return "queue"
    raise SpecError("not an Azure event: expected HTTP (method, url), blob (name, content) or queue (id, body) fields")


def registered(app: App, kind: str) -> Function:
    for function in app.get_functions():
        if trigger_type(function) == kind:
            return function
    raise NotFound(f"the app registers no {kind} trigger")


def local_invoke(function_name: str, event: dict[str, Any]) -> Any:
    """Run one sample event through the app's registered function, as the host would, and
    return what it produced: the HTTP status and body, or the blob or queue message written."""
    kind = event_kind(event)
    app = build_app(function_name, enable=(kind,))
    function = registered(app, kind)
    if kind == "http":
        try:
            response, _ = invoke(function, http_event(event))
        finally:
            close_app(app)
        body = response.get_body()
        return {"status": response.status_code, "body": json.loads(body) if body else None}
    spec = resolve_spec(function_name)
    if kind == "blob":
        stream = blob_event(event)
        _, outputs = invoke(function, stream)
        trigger = spec.triggers.blob or BlobTrigger()
        return {"output": output_blob_path(trigger, stream.name or ""), "document": _written(outputs)}
    _, outputs = invoke(function, queue_event(event))
    return {"output": (spec.triggers.queue or QueueTrigger()).output_queue, "message": _written(outputs)}


def _written(outputs: dict[str, OutputBinding]) -> Any:
    value = outputs["result"].get()
    return json.loads(value) if value is not None else None
