"""The ASGI app (FastAPI): the Cloud Run service and the local server (`modelfn serve`).
It speaks the simple route and the Open Inference Protocol, and micro-batches predictions."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from handlers.openapi_document import document
from modelfn import __version__, protocol
from modelfn.batching import MicroBatcher
from modelfn.codecs import Decoded, parse_json
from modelfn.errors import ModelfnError
from modelfn.function import ModelFunction, Outputs
from modelfn.http import MB, HttpRequest, HttpResponse, Service, api_key, check_api_key, failure, too_large
from modelfn.registry import Registry

log = logging.getLogger("modelfn")

JSON_BODY = {"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}, "required": True}}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": ["object", "array", "string"]}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
}


DOCUMENT_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def _json(response: HttpResponse) -> Response:
    return Response(response.encoded(), status_code=response.status, media_type="application/json")


class KeyedDocuments:
    """With an API key configured, the OpenAPI document (it names the functions served) and
    its pages need the key like every route but the health probes. Plain ASGI: predictions
    pass through it at the cost of one set lookup."""

    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in DOCUMENT_PATHS:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            try:
                check_api_key(headers, self.key)
            except ModelfnError as exc:
                await _json(failure(exc))(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Server:
    """State of one running app: the functions, a batcher per function, the thread pool."""

    def __init__(self, registry: Registry, max_body_bytes: int, key: str | None) -> None:
        self.registry = registry
        self.service = Service(registry, max_body_bytes, key)
        self.executor = ThreadPoolExecutor(max_workers=max(2, len(registry.specs)), thread_name_prefix="modelfn-run")
        self.batchers: dict[str, MicroBatcher] = {}
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent merged batch sizes, for tests and metrics

    async def run(self, fn: ModelFunction, decoded: Decoded) -> Outputs:
        if not fn.batchable:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn.run, decoded.feeds)
        batcher = self.batchers.get(fn.name)
        if batcher is None:
            batcher = self.batchers[fn.name] = MicroBatcher(fn, self.executor, self.batch_sizes.append)
        return await batcher.submit(decoded)

    async def body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to exceed the limit."""
        limit = self.service.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(int(declared), limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise too_large(None, limit)
        return b"".join(chunks)


def create_app(
    registry: Registry | None = None, *, max_body_mb: float | None = None, key: str | None = None, preload: bool = True
) -> FastAPI:
    registry = registry or Registry.from_dir()
    limit_mb = (
        max_body_mb
        or float(os.environ.get("MODELFN_MAX_BODY_MB", "0"))
        or max((s.io.max_body_mb for s in registry.specs.values()), default=32.0)
    )
    server = Server(registry, int(limit_mb * MB), key if key is not None else api_key())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if preload:
            await asyncio.get_running_loop().run_in_executor(None, registry.load_all)
        yield
        for batcher in server.batchers.values():
            await batcher.close()
        server.executor.shutdown(wait=False)

    app = FastAPI(
        title="modelfn",
        version=__version__,
        description="ONNX functions over the Open Inference Protocol (KServe v2) and a simple JSON route.",
        lifespan=lifespan,
    )
    app.state.server = server
    if server.service.key is not None:
        app.add_middleware(KeyedDocuments, key=server.service.key)
    app.openapi = lambda: document(app, sorted(registry.specs))  # type: ignore[method-assign]

    @app.exception_handler(ModelfnError)
    async def _modelfn_error(request: Request, exc: ModelfnError) -> Response:
        return _json(failure(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Unknown routes and wrong methods: the shared service words them, as on every provider."""
        if exc.status_code in (404, 405):
            return _json(server.service.handle(HttpRequest(request.method, request.url.path, dict(request.headers))))
        return _json(HttpResponse(exc.status_code, {"error": str(exc.detail), "code": "http_error"}))

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        """A client that hangs up before its body has arrived is routine, not an error with a
        traceback; nobody reads this answer (499: nginx's "client closed request")."""
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _json(failure(exc))

    def delegate(request: Request) -> Response:
        return _json(server.service.handle(HttpRequest(request.method, request.url.path, dict(request.headers))))

    @app.get("/v2/health/live", tags=["health"])
    async def live(request: Request) -> Response:
        return delegate(request)

    @app.get("/v2/health/ready", tags=["health"])
    async def ready(request: Request) -> Response:
        return delegate(request)

    @app.get("/v2", tags=["metadata"])
    async def server_metadata(request: Request) -> Response:
        return delegate(request)

    @app.get("/functions", tags=["functions"])
    async def list_functions(request: Request) -> Response:
        return delegate(request)

    @app.get("/v2/models/{name}", tags=["metadata"])
    async def model_metadata(name: str, request: Request) -> Response:
        return delegate(request)

    @app.get("/v2/models/{name}/ready", tags=["health"])
    async def model_ready(name: str, request: Request) -> Response:
        return delegate(request)

    def authorised(request: Request) -> ModelFunction:
        check_api_key(dict(request.headers), server.service.key)
        return registry.load(request.path_params["name"])

    @app.post("/v2/models/{name}/infer", tags=["inference"], openapi_extra=JSON_BODY)
    async def infer(name: str, request: Request) -> Response:
        fn = authorised(request)
        body = await server.body(request)
        feeds, wanted, request_id = protocol.decode_request(parse_json(body), fn.inputs, fn.spec.io.nan_policy)
        outputs = await server.run(fn, Decoded(feeds))
        return _json(HttpResponse(200, protocol.encode_response(fn.name, outputs, fn.outputs, wanted, request_id)))

    @app.post("/functions/{name}", tags=["inference"], openapi_extra=PREDICT_BODY)
    async def predict(name: str, request: Request) -> Response:
        fn = authorised(request)
        body = await server.body(request)
        decoded = fn.decode(body, request.headers.get("content-type"))
        outputs = await server.run(fn, decoded)
        return _json(HttpResponse(200, fn.encode(outputs, decoded)))

    return app


def __getattr__(name: str) -> Any:
    """`handlers.cloud_run:app` for uvicorn and Cloud Run: built on first access from $MODELFN_FUNCTIONS_DIR."""
    if name == "app":
        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)
