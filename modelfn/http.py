"""The HTTP surface every provider shares, without a web framework: the simple route
`POST /functions/{name}` and the Open Inference Protocol routes. Serverless adapters turn
their events into an `HttpRequest` and render the `HttpResponse`; the local server (FastAPI)
calls the same operations so the JSON and the status codes are the same everywhere."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelfn import __version__
from modelfn.codecs import parse_json
from modelfn.errors import MethodNotAllowed, ModelfnError, NotFound, PayloadTooLarge, Unauthorized, error_body
from modelfn.registry import Registry

log = logging.getLogger("modelfn")
MB = 1024 * 1024


@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        self.headers = {k.lower(): v for k, v in self.headers.items()}
        self.path = "/" + self.path.strip("/") if self.path not in ("", "/") else "/"

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


@dataclass
class HttpResponse:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})

    def encoded(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":"), allow_nan=False).encode()


def api_key() -> str | None:
    return os.environ.get("MODELFN_API_KEY") or None


def check_api_key(headers: dict[str, str], expected: str | None) -> None:
    """Constant-time check of `x-api-key` or `Authorization: Bearer`, when a key is configured."""
    if expected is None:
        return
    import hmac  # loads OpenSSL's hashing (~4 ms): only paid where a key is configured

    given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("missing or wrong API key: send it as the x-api-key header")


def check_size(body: bytes, limit_bytes: int) -> None:
    if len(body) > limit_bytes:
        raise too_large(len(body), limit_bytes)


def too_large(size: int | None, limit_bytes: int) -> PayloadTooLarge:
    """In bytes as well as MB: '6.0 MB over a 6.0 MB limit' would read as a contradiction."""
    limit = f"{limit_bytes} bytes ({limit_bytes / MB:.1f} MB)"
    if size is None:
        return PayloadTooLarge(f"request body exceeds the limit here of {limit}")
    return PayloadTooLarge(f"request body is {size} bytes; the limit here is {limit}")


PUBLIC = ("/v2/health/live", "/v2/health/ready")


class Service:
    """The operations behind every HTTP route, for one registry of functions."""

    def __init__(self, registry: Registry, max_body_bytes: int = 32 * MB, key: str | None = None) -> None:
        self.registry = registry
        self.max_body_bytes = max_body_bytes
        self.key = key
        # predictions first: they are nearly all the traffic
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., HttpResponse]]] = [
            ("POST", re.compile(r"/functions/(?P<name>[^/]+)"), self.predict),
            ("POST", re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/[^/]+)?/infer"), self.infer),
            ("GET", re.compile(r"/v2/health/live"), self.live),
            ("GET", re.compile(r"/v2/health/ready"), self.ready),
            ("GET", re.compile(r"/v2"), self.server_metadata),
            ("GET", re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/[^/]+)?"), self.model_metadata),
            ("GET", re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/[^/]+)?/ready"), self.model_ready),
            ("GET", re.compile(r"/(?:functions)?"), self.list_functions),
        ]

    def handle(self, request: HttpRequest) -> HttpResponse:
        """Route one request; every error becomes its status and a JSON message, never a traceback."""
        try:
            if request.path not in PUBLIC:
                check_api_key(request.headers, self.key)
            for method, pattern, operation in self.routes:
                match = pattern.fullmatch(request.path)
                if match is None:
                    continue
                if method != request.method:
                    if any(p.fullmatch(request.path) and m == request.method for m, p, _ in self.routes):
                        continue
                    raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {method}")
                return operation(request, **match.groupdict())
            raise NotFound(f"no route {request.path}; try POST /functions/{{name}} or /v2/models/{{name}}/infer")
        except ModelfnError as exc:
            return failure(exc)
        except Exception as exc:
            log.exception("unexpected error on %s %s", request.method, request.path)
            return failure(exc)

    def live(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, {"live": True})

    def ready(self, request: HttpRequest) -> HttpResponse:
        ready = self.registry.ready()
        body: dict[str, Any] = {"ready": ready}
        if self.registry.failed:
            body["failed"] = {name: exc.message for name, exc in self.registry.failed.items()}
        return HttpResponse(200 if ready else 503, body)

    def server_metadata(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, {"name": "modelfn", "version": __version__, "extensions": []})

    def model_metadata(self, request: HttpRequest, name: str) -> HttpResponse:
        return HttpResponse(200, self.registry.load(name).metadata())

    def model_ready(self, request: HttpRequest, name: str) -> HttpResponse:
        if name not in self.registry.specs:
            raise NotFound(f"unknown function {name!r}; this server has {sorted(self.registry.specs)}")
        try:
            self.registry.load(name)
        except ModelfnError:
            return HttpResponse(503, {"name": name, "ready": False})
        return HttpResponse(200, {"name": name, "ready": True})

    def list_functions(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, {"functions": sorted(self.registry.specs)})

    def infer(self, request: HttpRequest, name: str) -> HttpResponse:
        fn = self.registry.load(name)
        check_size(request.body, self.max_body_bytes)
        return HttpResponse(200, fn.infer_v2(parse_json(request.body)))

    def predict(self, request: HttpRequest, name: str) -> HttpResponse:
        fn = self.registry.load(name)
        check_size(request.body, self.max_body_bytes)
        return HttpResponse(200, fn.predict(request.body, request.content_type))


def failure(exc: BaseException) -> HttpResponse:
    status, body = error_body(exc)
    return HttpResponse(status, body)
