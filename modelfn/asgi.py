"""The ASGI server: `modelfn serve`, the Cloud Run service, and (through Mangum or Azure's
`AsgiMiddleware`) an optional HTTP entry on Lambda and Azure. No web framework: it reads
the request, refuses an oversized body as soon as it is known, and hands everything else
to the core `Service` (routes, key, limits, batching, errors)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from modelfn.errors import ModelfnError
from modelfn.http import MB, HttpRequest, HttpResponse, api_key, failure, too_large
from modelfn.registry import Registry
from modelfn.routes import normalise
from modelfn.service import Service

log = logging.getLogger("modelfn")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ClientGone(Exception):
    """The client hung up before its body arrived: routine, nobody reads an answer."""


class App:
    """An ASGI 3 application over one Service."""

    def __init__(self, service: Service, preload: bool = True) -> None:
        self.service = service
        self.preload = preload

    @property
    def registry(self) -> Registry:
        return self.service.registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], normalise(scope["path"])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        started = time.perf_counter()
        admitted = None
        try:
            admitted = self.service.admit(method, path, headers)
            route, params = admitted
            body = b""
            if route.body is not None:
                body = await read_body(receive, headers, self.service.limit(params.get("name")))
        except ModelfnError as exc:
            response = failure(exc)
        except ClientGone:
            return
        else:
            response = await self.service.handle_async(HttpRequest(method, path, headers, body), admitted)
        await respond(send, response, head=method == "HEAD")
        if self.service.metrics is not None:
            matched = admitted[0] if admitted is not None else None
            self.service.metrics.request(method, path, response, time.perf_counter() - started, matched)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.preload:
                    await asyncio.to_thread(self.registry.load_all)
                # What start-up made (modules, specs, sessions) lives as long as the server: out of
                # the collector's way, full collections are shorter, and so is the latency tail.
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.service.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed the limit."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise too_large(None, limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send: Send, response: HttpResponse, head: bool = False) -> None:
    body = response.encoded()
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def create_app(
    registry: Registry | None = None, *, max_body_mb: float | None = None, key: str | None = None, preload: bool = True
) -> App:
    """The app for a registry (default: every function under $MODELFN_FUNCTIONS_DIR).
    `max_body_mb` overrides every function's `io.max_body_mb`; `key` (default
    $MODELFN_API_KEY) is required on every route but the health probes."""
    registry = registry or Registry.from_dir()
    service = Service(
        registry,
        key=key if key is not None else api_key(),
        max_body_bytes=int(max_body_mb * MB) if max_body_mb else None,
    )
    from modelfn.metrics import server_metrics

    service.metrics = server_metrics(service)
    if service.metrics is not None:  # per-version answers and shadow agreement beside the server's own metrics
        from modelfn.observations import prometheus_recorder, subscribe

        subscribe(prometheus_recorder(service.metrics.registry, service.metrics.functions))
    return App(service, preload)
