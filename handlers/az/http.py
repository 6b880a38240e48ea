"""The HTTP trigger: every route of the core `Service` behind one catch-all route, or the
core's ASGI server through `AsgiMiddleware` (`MODELFN_AZURE_HTTP=asgi`)."""

import asyncio
from typing import Any
from urllib.parse import urlparse

import azure.functions as func

from handlers.az.served import ServedFunction
from modelfn.http import HttpRequest, HttpResponse
from modelfn.spec import HttpTrigger

AUTH_LEVELS = {"iam": func.AuthLevel.FUNCTION, "none": func.AuthLevel.ANONYMOUS}
# Every method, so that the Service, not the host, answers 405 as on every provider.
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


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
        response.encoded(), status_code=response.status, headers=response.headers, mimetype=response.content_type
    )


def serve(served: ServedFunction, req: func.HttpRequest) -> func.HttpResponse:
    return to_func_response(served.service.handle(to_http_request(req)))


def register(app: func.FunctionApp, served: ServedFunction, trigger: HttpTrigger, function_id: str) -> None:
    @app.function_name(function_id)
    @app.route(route="{*path}", methods=METHODS, auth_level=AUTH_LEVELS[trigger.auth])
    def http_trigger(req: func.HttpRequest) -> func.HttpResponse:
        return serve(served, req)


class AsgiApp(func.AsgiFunctionApp):
    """`AsgiFunctionApp` whose lifespan shutdown is an explicit `close(loop)`: the library's
    `__del__` runs it on a fresh event loop, which waits forever for the app's loop."""

    def __del__(self) -> None:
        pass

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.startup_task_done:
            asyncio.run_coroutine_threadsafe(self.middleware.notify_shutdown(), loop).result(timeout=30)
            self.startup_task_done = False


def asgi_app(served: ServedFunction, trigger: HttpTrigger, function_id: str, preload: bool) -> Any:
    """The core's ASGI server behind `AsgiMiddleware`: micro-batching, at the price of the
    middleware's start-up (the README's Azure section has the figures)."""
    from modelfn.asgi import App

    return AsgiApp(App(served.service, preload), AUTH_LEVELS[trigger.auth], function_id)
