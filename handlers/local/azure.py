"""Running the Azure Functions app here, as the host would: output bindings as slots the
test or the caller reads, the worker's one event loop, and sample event files (see
events/azure/) turned into the host's request, blob and message types."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import threading
from typing import Any
from urllib.parse import urlparse

import azure.functions as func
from azure.functions.decorators.core import BindingDirection
from azure.functions.decorators.function_app import Function
from azure.functions.queue import QueueMessage

from handlers.az.blob import output_blob_path
from handlers.az.http import AsgiApp
from handlers.azure_functions import App, build_app, resolve_spec, trigger_type
from modelfn.errors import NotFound, SpecError
from modelfn.spec import BlobTrigger, FunctionSpec, QueueTrigger


def close_app(app: App) -> None:
    """Release what serving left running (the ASGI app's lifespan); a no-op for the direct app."""
    if isinstance(app, AsgiApp):
        app.close(worker_loop())


class OutputBinding(func.Out[str]):
    """What the host hands a function for an output binding: a slot it sets once, which
    the host then writes to storage. Local invocation and the tests read it instead."""

    def __init__(self) -> None:
        self.value: str | None = None

    def set(self, val: str) -> None:
        self.value = val

    def get(self) -> str | None:  # type: ignore[override]  # None until set, as the worker's own Out
        return self.value


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


def registered(app: App, kind: str) -> Function:
    for function in app.get_functions():
        if trigger_type(function) == kind:
            return function
    raise NotFound(f"the app registers no {kind} trigger")


class HttpFile:
    """events/azure/http.json: the HTTP status and body the host would answer."""

    trigger = "http"
    fields = ("method", "url", "route")

    @staticmethod
    def run(function: Function, app: App, spec: FunctionSpec, event: dict[str, Any]) -> Any:
        try:
            response, _ = invoke(function, http_event(event))
        finally:
            close_app(app)
        body = response.get_body()
        return {"status": response.status_code, "body": json.loads(body) if body else None}


class BlobFile:
    """events/azure/blob.json: where the output binding writes, and the document written."""

    trigger = "blob"
    fields = ("uri", "content", "content_base64")

    @staticmethod
    def run(function: Function, app: App, spec: FunctionSpec, event: dict[str, Any]) -> Any:
        stream = blob_event(event)
        _, outputs = invoke(function, stream)
        trigger = spec.triggers.blob or BlobTrigger()
        return {"output": output_blob_path(trigger, stream.name or ""), "document": _written(outputs)}


class QueueFile:
    """events/azure/queue.json: the output queue, and the message sent to it."""

    trigger = "queue"
    fields = ("dequeue_count", "body", "body_base64")

    @staticmethod
    def run(function: Function, app: App, spec: FunctionSpec, event: dict[str, Any]) -> Any:
        _, outputs = invoke(function, queue_event(event))
        return {"output": (spec.triggers.queue or QueueTrigger()).output_queue, "message": _written(outputs)}


KINDS: list[type[HttpFile | BlobFile | QueueFile]] = [HttpFile, BlobFile, QueueFile]


def event_kind(event: dict[str, Any]) -> type[HttpFile | BlobFile | QueueFile]:
    """The kind an event file names (`"trigger"`), else the first whose fields it has."""
    for kind in KINDS:
        if event.get("trigger") == kind.trigger:
            return kind
    for kind in KINDS:
        if any(field in event for field in kind.fields):
            return kind
    raise SpecError("not an Azure event: expected HTTP (method, url), blob (name, content) or queue (id, body) fields")


def local_invoke(function_name: str, event: dict[str, Any]) -> Any:
    """Run one sample event through the app's registered function, as the host would, and
    return what it produced: the HTTP status and body, or the blob or queue message written."""
    kind = event_kind(event)
    app = build_app(function_name, enable=(kind.trigger,))
    return kind.run(registered(app, kind.trigger), app, resolve_spec(function_name), event)


def _written(outputs: dict[str, OutputBinding]) -> Any:
    value = outputs["result"].get()
    return json.loads(value) if value is not None else None
