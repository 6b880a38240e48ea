"""The Service: the one predict pipeline behind every route, trigger and provider.

Routing (`modelfn.routes`), the API key, each function's body limit, decoding, inference,
encoding and error wording happen here once. Two drivers share every step: `handle` runs
inference in the calling thread (a Lambda, a Cloud Function, an Azure trigger: one request
per process at a time), `handle_async` merges concurrent requests through a micro-batcher
and keeps large bodies' decoding and encoding off the event loop (the ASGI server)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelfn import __version__, protocol
from modelfn.codecs import Decoded, Feeds
from modelfn.errors import ModelfnError, NotFound, error_body
from modelfn.http import MB, HttpRequest, HttpResponse, check_api_key, check_size, failure
from modelfn.monitor import Monitor
from modelfn.registry import Registry
from modelfn.routes import ROUTES, Route, match
from modelfn.traffic import Serving, header_key, shadow_done, shadow_dropped, shadow_failed

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from modelfn.batching import MicroBatcher
    from modelfn.function import ModelFunction, Outputs
    from modelfn.shadow_copy import ShadowInput

log = logging.getLogger("modelfn")

PUBLIC_PATHS = frozenset(r.template for r in ROUTES if r.public and not r.parameters)
OFFLOAD_BYTES = 256 * 1024
"""Bodies above this are decoded and their answers encoded in a worker thread, so a large
request does not hold the event loop (health probes, other callers) while it is parsed."""
SHADOW_BACKLOG = 64
"""Shadow copies the async driver keeps waiting at most; beyond that a copy is dropped (and
counted), so a slow shadow version or a busy server cannot pile work up behind the live one."""


class Inference:
    """A request decoded and ready to run: the function, its feeds, and how to turn the
    outputs into the answer (by default the function's own codec, as an HTTP answer). Each
    driver runs it its own way (directly or batched)."""

    __slots__ = ("_finish", "decoded", "fn", "outputs")

    def __init__(self, fn: ModelFunction, decoded: Decoded, finish: Callable[[Outputs], Any] | None = None) -> None:
        self.fn = fn
        self.decoded = decoded
        self._finish = finish
        self.outputs: Outputs | None = None

    def finish(self, outputs: Outputs) -> Any:
        if self._finish is None:
            return HttpResponse(200, self.fn.encode(outputs, self.decoded))
        return self._finish(outputs)

    def run(self) -> Any:
        return self.finish(self.fn.run(self.decoded.feeds))


_OPERATIONS = {r.operation: "_" + r.operation for r in ROUTES}
"""Each route's operation, as the Service method's name (made once, not per request)."""


class Service:
    """Every operation for one registry of functions.

    `max_body_bytes` overrides each function's own `io.max_body_mb` (`modelfn serve
    --max-body-mb`, `$MODELFN_MAX_BODY_MB`); `platform_limit_bytes` is what the platform carries
    at most (Lambda's 6 MB), which no setting can raise."""

    def __init__(
        self,
        registry: Registry,
        *,
        key: str | None = None,
        max_body_bytes: int | None = None,
        platform_limit_bytes: int | None = None,
    ) -> None:
        self.registry = registry
        self.key = key
        configured = float(os.environ.get("MODELFN_MAX_BODY_MB") or 0)
        self.max_body_bytes = max_body_bytes or (int(configured * MB) if configured else None)
        self.platform_limit_bytes = platform_limit_bytes
        self._limits: dict[str | None, int] = {}
        """`limit` per name, worked out on first use (specs and settings are fixed once served)."""
        self.batchers: dict[str, MicroBatcher] = {}
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent merged batch sizes, for metrics and tests
        self._executor: ThreadPoolExecutor | None = None
        self._shadow_queue: deque[tuple[Any, ...]] = deque()
        """Shadow copies waiting for an idle moment, at most SHADOW_BACKLOG."""
        self._in_flight = 0
        """Requests the async driver is answering now: the shadow lane runs only when none are."""
        self._idle: Any = None
        """The event the shadow lane waits on while live requests are in flight."""
        self._lane: Any = None
        """The async driver's shadow lane (a task, while it has copies to run)."""
        self._closing = False
        self._admitted: dict[tuple[str, str], tuple[Route, dict[str, str]]] = {}
        """The inference paths of the functions served, each matched once: a regular expression per
        request cost ~1 us of a Lambda invocation (bench/lambda_warm.py). Bounded by the registry and
        the route table: paths naming a version, or a function not served, are matched every time."""
        self.monitor = Monitor()
        """Prediction cache and drift counting around each model run, for the functions that ask."""
        self.metrics: Any = None
        """The server's Prometheus metrics (`modelfn.metrics.ServerMetrics`), set by `create_app`."""
        self.shadow_sink: Callable[[Any], None] | None = None
        """Where the sync driver sends shadow copies (`modelfn.shadow_copy`) to run in an invocation
        of their own (set by a provider that has one); None runs them here, after the answer."""

    # -- the calls adapters make -------------------------------------------------------

    def limit(self, name: str | None) -> int:
        """The largest body `name` accepts here; for an unknown name, the largest of any."""
        try:
            return self._limits[name]
        except KeyError:
            found = self._limit(name)
            if name is None or name in self.registry.specs:  # not one entry per name a client makes up
                self._limits[name] = found
            return found

    def _limit(self, name: str | None) -> int:
        spec = self.registry.specs.get(name) if name else None
        if self.max_body_bytes is not None:
            limit = self.max_body_bytes
        elif spec is not None:
            limit = int(spec.io.max_body_mb * MB)
        else:
            limit = int(max((s.io.max_body_mb for s in self.registry.specs.values()), default=32.0) * MB)
        return min(limit, self.platform_limit_bytes) if self.platform_limit_bytes else limit

    def admit(self, method: str, path: str, headers: dict[str, str]) -> tuple[Route, dict[str, str]]:
        """The checks made before a body is read: the key (every route but the health probes,
        unknown ones included, so nothing answers but 401 without it), then the route."""
        if path not in PUBLIC_PATHS:
            check_api_key(headers, self.key)
        known = self._admitted.get((method, path))
        if known is not None:
            return known[0], dict(known[1])
        route, params = match(method, path)
        if route.body is not None and "version" not in params and params.get("name") in self.registry.specs:
            self._admitted[(method, path)] = (route, dict(params))  # a served function's own inference paths
        return route, params

    def handle(self, request: HttpRequest) -> HttpResponse:
        """One request, inference in this thread; every error becomes its status and JSON."""
        serving = outcome = None
        try:
            route, params = self.admit(request.method, request.path, request.headers)
            if route.body is None:
                response = getattr(self, _OPERATIONS[route.operation])(request, **params)
            else:  # an inference: its function is resolved once, with the version that answers
                fn, serving = self._serving(params, request)
                outcome = getattr(self, _OPERATIONS[route.operation])(request, fn)
                response = self._complete(outcome)
        except Exception as exc:
            response = self._failure(exc, request)
        if serving is not None:
            serving.finish(response.status, response.headers)
            if serving.shadow is not None and outcome is not None and outcome.outputs is not None:
                self._shadow_copy(serving, _request_source(route, request), outcome.outputs)  # see the README
        return response  # type: ignore[no-any-return]

    async def handle_async(
        self, request: HttpRequest, admitted: tuple[Route, dict[str, str]] | None = None
    ) -> HttpResponse:
        """One request on an event loop: batched inference, large bodies off the loop."""
        self._in_flight += 1
        try:
            return await self._handle_async(request, admitted)
        finally:
            self._in_flight -= 1
            if not self._in_flight and self._idle is not None:
                self._idle.set()  # the shadow lane's turn

    async def _handle_async(
        self, request: HttpRequest, admitted: tuple[Route, dict[str, str]] | None = None
    ) -> HttpResponse:
        import asyncio  # here, not at import: the sync driver (Lambda's cold start) never pays for it

        serving = outputs = None
        try:
            route, params = admitted or self.admit(request.method, request.path, request.headers)
            operation = getattr(self, _OPERATIONS[route.operation])
            name = params.get("name")
            if name and name not in self.registry.loaded and name in self.registry.specs:
                await asyncio.to_thread(self._load_quietly, name)
            heavy = len(request.body) > OFFLOAD_BYTES
            if route.body is None:
                response: HttpResponse = (
                    await asyncio.to_thread(operation, request, **params) if heavy else operation(request, **params)
                )
            else:
                fn, serving = self._serving(params, request)
                outcome = await asyncio.to_thread(operation, request, fn) if heavy else operation(request, fn)
                outputs = await self.outputs_async(outcome.fn, outcome.decoded)
                if heavy:
                    response = await asyncio.to_thread(_finished, outcome, outputs)
                else:
                    response = outcome.finish(outputs)
        except Exception as exc:
            response = self._failure(exc, request)
        if serving is not None:
            serving.finish(response.status, response.headers)
            if serving.shadow is not None and outputs is not None:
                self._shadow_later(serving.shadow, _request_source(route, request).feeds, outputs, heavy)
        return response

    def predict(
        self,
        name: str,
        body: bytes | None = None,
        content_type: str | None = None,
        payload: Any = None,
        key: str | None = None,
    ) -> Any:
        """One prediction for an event (an object, a message): the result, or a typed error.
        The version answering follows `[traffic]`, sticky by `key` when the event carries one."""
        versions = self.registry.traffic(name)
        serving = Serving(versions, versions.choose(key))
        fn = serving.fn
        try:
            if body is not None:
                check_size(body, self.limit(name))
            decoded = fn.decode(body, content_type, payload)
            outputs = self.outputs(fn, decoded)
            result = fn.encode(outputs, decoded)
        except Exception as exc:
            serving.finish(error_body(exc)[0])
            raise
        serving.finish(200)
        if serving.shadow is not None:
            self._shadow_copy(
                serving, _shadow_input("codec", body=body, content_type=content_type, payload=payload), outputs
            )
        return result

    def infer(self, name: str, document: Any, key: str | None = None) -> dict[str, Any]:
        """One Open Inference Protocol request that arrived as an event (a direct invoke)."""
        versions = self.registry.traffic(name)
        serving = Serving(versions, versions.choose(key))
        try:
            inference = self._inference(serving.fn, document)
            answer = self._complete(inference)
        except Exception as exc:
            serving.finish(error_body(exc)[0])
            raise
        serving.finish(200)
        if serving.shadow is not None and inference.outputs is not None:
            self._shadow_copy(serving, _shadow_input("document", payload=document), inference.outputs)
        return answer  # type: ignore[no-any-return]

    def function(self, name: str) -> ModelFunction:
        return self.registry.load(name)

    def outputs(self, fn: ModelFunction, decoded: Decoded) -> Outputs:
        """One model run in this thread, through the function's cache and drift counting if it has them."""
        watched = self.monitor.watched(fn)
        return fn.run(decoded.feeds) if watched is None else watched.run(fn, decoded.feeds)

    async def outputs_async(self, fn: ModelFunction, decoded: Decoded) -> Outputs:
        """`outputs` for the async driver: the model run is batched, a shared cache is called off the loop."""
        watched = self.monitor.watched(fn)
        if watched is None:
            return await self.run_batched(fn, decoded)
        return await watched.run_async(decoded.feeds, lambda: self.run_batched(fn, decoded))

    def _complete(self, inference: Inference) -> Any:
        inference.outputs = self.outputs(inference.fn, inference.decoded)
        return inference.finish(inference.outputs)

    async def run_batched(self, fn: ModelFunction, decoded: Decoded) -> Outputs:
        import asyncio

        loop = asyncio.get_running_loop()
        if not fn.batchable:
            return await loop.run_in_executor(self.executor, fn.run, decoded.feeds)
        key = fn.name if self.registry.loaded.get(fn.name) is fn else f"{fn.name}@{fn.version}"  # one per version
        batcher = self.batchers.get(key)
        if batcher is None:
            from modelfn.batching import MicroBatcher

            batcher = self.batchers[key] = MicroBatcher(fn, self.executor, self._on_batch(fn.name))
        return await batcher.submit(decoded)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """Model runs of the async driver; created on first use (the sync driver never needs it)."""
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            workers = 2 * max(1, len(self.registry.specs))  # two runs in flight per function (no lockstep)
            self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modelfn-run")
        return self._executor

    def _on_batch(self, name: str) -> Callable[[int], None]:
        metrics = self.metrics
        if metrics is None:
            return self.batch_sizes.append

        def record(rows: int) -> None:
            self.batch_sizes.append(rows)
            metrics.batch(name, rows)

        return record

    async def close(self) -> None:
        import asyncio

        self._closing = True
        if self._idle is not None:
            self._idle.set()
        if self._lane is not None:  # copies already taken finish their comparison before the batchers close
            await asyncio.gather(self._lane, return_exceptions=True)
        self.monitor.close_windows()
        if self.metrics is not None:
            self.metrics.close()
        for batcher in self.batchers.values():
            await batcher.close()
        self.batchers.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    # -- the route operations, named in modelfn.routes.ROUTES ---------------------------

    def _predict(self, request: HttpRequest, fn: ModelFunction) -> Inference:
        check_size(request.body, self.limit(fn.name))
        return Inference(fn, fn.decode(request.body, request.content_type))

    def _infer(self, request: HttpRequest, fn: ModelFunction) -> Inference:
        """JSON, or the binary tensor extension when `Inference-Header-Content-Length` is sent."""
        check_size(request.body, self.limit(fn.name))
        header_length = request.headers.get(protocol.HEADER_LENGTH)
        infer = protocol.decode_body(request.body, header_length, fn.inputs, fn.spec.io.nan_policy, outputs=fn.outputs)

        def finish(outputs: Outputs) -> HttpResponse:
            body, length = protocol.encode_body(fn.name, outputs, fn.outputs, infer, fn.version)
            return HttpResponse(200, body, protocol.response_headers(length))

        return Inference(fn, Decoded(infer.feeds), finish)

    def _inference(self, fn: ModelFunction, document: Any) -> Inference:
        feeds, wanted, request_id = protocol.decode_request(
            document, fn.inputs, fn.spec.io.nan_policy, outputs=fn.outputs
        )
        return Inference(
            fn,
            Decoded(feeds),
            lambda outputs: protocol.encode_response(fn.name, outputs, fn.outputs, wanted, request_id, fn.version),
        )

    def _live(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, {"live": True})

    def _ready(self, request: HttpRequest) -> HttpResponse:
        ready = self.registry.ready()
        body: dict[str, Any] = {"ready": ready}
        if self.registry.failed:
            body["failed"] = {name: exc.message for name, exc in self.registry.failed.items()}
        return HttpResponse(200 if ready else 503, body)

    def _server_metadata(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, {"name": "modelfn", "version": __version__, "extensions": list(protocol.EXTENSIONS)})

    def _model_metadata(self, request: HttpRequest, name: str, version: str | None = None) -> HttpResponse:
        versions = self.registry.traffic(name)
        fn = versions.get(version) if version else self.function(name)
        metadata = fn.metadata()
        metadata["versions"] = versions.names
        return HttpResponse(200, metadata)

    def _model_ready(self, request: HttpRequest, name: str, version: str | None = None) -> HttpResponse:
        if name not in self.registry.specs:
            raise NotFound(f"unknown function {name!r}; this server has {sorted(self.registry.specs)}")
        try:
            self.registry.load(name)
        except ModelfnError:
            return HttpResponse(503, {"name": name, "ready": False})
        if version is not None:
            self.registry.traffic(name).get(version)
        return HttpResponse(200, {"name": name, "ready": True})

    def _list_functions(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, {"functions": sorted(self.registry.specs)})

    def _metrics(self, request: HttpRequest) -> HttpResponse:
        if self.metrics is None:
            raise NotFound("/metrics is served by `modelfn serve` and Cloud Run; Lambda sends EMF, others log lines")
        body, content_type = self.metrics.exposition(self)
        return HttpResponse(200, body, {"content-type": content_type})

    def _openapi(self, request: HttpRequest) -> HttpResponse:
        from modelfn.openapi import document

        return HttpResponse(200, document(sorted(self.registry.specs)))

    def _docs(self, request: HttpRequest) -> HttpResponse:
        from modelfn.openapi import swagger_page

        return HttpResponse(200, swagger_page(), {"content-type": "text/html; charset=utf-8"})

    def _docs_asset(self, request: HttpRequest, asset: str) -> HttpResponse:
        from modelfn.openapi import swagger_asset

        body, content_type = swagger_asset(asset)
        return HttpResponse(200, body, {"content-type": content_type, "cache-control": "max-age=86400"})

    # -- helpers ---------------------------------------------------------------------

    def _serving(self, params: dict[str, str], request: HttpRequest) -> tuple[ModelFunction, Serving | None]:
        """For an inference route, the version that answers: the one the path names, else the
        traffic policy's pick (sticky by `x-modelfn-key`), with a shadow copy on the latter only;
        and how the answer is recorded (None for a function with one model)."""
        versions = self.registry.traffic(params["name"])
        named = params.get("version")
        if not versions.versioned:  # one model: nothing to choose, copy or count per version
            return (versions.get(named) if named else versions.functions[versions.default]), None
        fn = versions.get(named) if named else versions.choose(header_key(request.headers))
        return fn, Serving(versions, fn, shadow=named is None)

    def _shadow_copy(self, serving: Serving, source: ShadowInput, live: Outputs) -> None:
        """The sync driver's shadow copy, after the answer: run here, or sent to the shadow's own
        invocation when the provider set `shadow_sink` (`source` reads the input again)."""
        shadow = serving.shadow
        if shadow is None:
            return
        if self.shadow_sink is None:
            serving.shadow_run(source.feeds, live)
            return
        from modelfn.shadow_copy import ShadowCopy

        try:
            self.shadow_sink(ShadowCopy(shadow.name, shadow.version, serving.version, source, live))
        except Exception:  # the sink reports its own failures; nothing may reach the live answer
            log.exception("shadow copy of %s not sent", shadow.name)

    def _shadow_later(
        self, shadow: ModelFunction, decode: Callable[[ModelFunction], Feeds], live: Outputs, heavy: bool
    ) -> None:
        """The async driver's shadow copy, after the live answer, at a lower priority than any live
        request: copies wait in a bounded queue and one lane runs them, one at a time, only while
        no live request is in flight. A server that is never idle drops copies (counted) rather
        than slow its answers."""
        import asyncio

        if len(self._shadow_queue) >= SHADOW_BACKLOG:
            shadow_dropped(shadow.name, shadow.version)
            return
        self._shadow_queue.append((shadow, decode, live, heavy))
        if self._lane is None:
            self._lane = asyncio.get_running_loop().create_task(self._shadow_lane())

    async def _shadow_lane(self) -> None:
        try:
            while self._shadow_queue:
                await self._quiet()  # live requests first
                await self._shadow(*self._shadow_queue.popleft())
        finally:
            self._lane = None  # no await since the queue was seen empty: a copy added now starts a lane

    async def _quiet(self) -> float:
        """Wait until no live request is in flight; the seconds waited."""
        import asyncio
        import time

        started = time.perf_counter()
        while self._in_flight and not self._closing:
            self._idle = asyncio.Event()
            await self._idle.wait()
        return time.perf_counter() - started

    async def _shadow(
        self, shadow: ModelFunction, decode: Callable[[ModelFunction], Feeds], live: Outputs, heavy: bool
    ) -> None:
        import asyncio
        import time

        started = time.perf_counter()
        try:
            await asyncio.sleep(0)  # the live answer is written first
            feeds = await asyncio.to_thread(decode, shadow) if heavy else decode(shadow)
            # between its steps the copy yields to live requests that arrived meanwhile (their
            # wait is not the shadow's latency)
            started += await self._quiet()
            outputs = await self.run_batched(shadow, Decoded(feeds))
            started += await self._quiet()
        except Exception as exc:
            shadow_failed(shadow, exc, started)
            return
        shadow_done(shadow, live, outputs, started)

    def _load_quietly(self, name: str) -> None:
        with contextlib.suppress(ModelfnError):  # kept in registry.failed; the operation reports it
            self.registry.load(name)

    @staticmethod
    def _failure(exc: BaseException, request: HttpRequest) -> HttpResponse:
        if not isinstance(exc, ModelfnError):
            log.exception("unexpected error on %s %s", request.method, request.path)
        return failure(exc)


def _shadow_input(kind: str, **fields: Any) -> ShadowInput:
    """How the shadow version reads a request again, with its own codec or inputs. (Imported
    here: only functions with a shadow version make one.)"""
    from modelfn.shadow_copy import ShadowInput

    return ShadowInput(kind, **fields)


def _request_source(route: Route, request: HttpRequest) -> ShadowInput:
    if route.body == "inference":
        return _shadow_input("inference", body=request.body, header_length=request.headers.get(protocol.HEADER_LENGTH))
    return _shadow_input("codec", body=request.body, content_type=request.content_type)


def _finished(inference: Inference, outputs: Outputs) -> HttpResponse:
    response: HttpResponse = inference.finish(outputs)
    response.encoded()  # encoded here, in the worker thread, not on the loop
    return response
