"""The one route table. The Service dispatches on it, the ASGI server and every serverless
adapter match paths through it, the OpenAPI document and the CDK API routes are written
from it: adding a route is one row here."""

from __future__ import annotations

import re

from modelfn.errors import MethodNotAllowed, NotFound

_PARAMETER = re.compile(r"\{(\w+)\}")


class Route:
    """One method and path template, the Service operation behind it, and what the OpenAPI
    document says of it. (A plain class: a dataclass would be generated at import, on the
    Lambda cold-start path.)"""

    __slots__ = ("_pattern", "body", "errors", "method", "operation", "public", "success", "summary", "tag", "template")

    def __init__(
        self,
        method: str,
        template: str,
        operation: str,
        *,
        tag: str,
        summary: str,
        success: dict[int, str],
        errors: tuple[int, ...] = (401,),
        public: bool = False,
        body: str | None = None,
    ) -> None:
        self.method = method
        self.template = template
        self.operation = operation
        self.tag = tag
        self.summary = summary
        self.success = success
        self.errors = errors
        self.public = public
        """Answered without the API key: the platform's health probes cannot send one."""
        self.body = body
        """The request body's kind: "inference" (OIP), "payload" (the function's codec) or None."""
        self._pattern: re.Pattern[str] | None = None

    @property
    def pattern(self) -> re.Pattern[str]:
        """Compiled on first use: a cold start that serves one route compiles one expression."""
        if self._pattern is None:
            escaped = re.escape(self.template).replace(r"\{", "{").replace(r"\}", "}")
            self._pattern = re.compile(_PARAMETER.sub(r"(?P<\1>[^/]+)", escaped))
        return self._pattern

    @property
    def parameters(self) -> list[str]:
        return _PARAMETER.findall(self.template)

    def path_for(self, **values: str) -> str:
        """The template with its parameters filled in, e.g. `/functions/breast-cancer`."""
        return _PARAMETER.sub(lambda m: values[m.group(1)], self.template)


_INFER_ERRORS = (400, 401, 404, 413, 415, 422, 503)
_INFERENCE = {200: "InferenceResponse"}
_METADATA = {200: "ModelMetadata"}
_READY = {200: "ModelReadiness", 503: "ModelReadiness"}

# predictions first: they are nearly all the traffic
ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/functions/{name}",
        "predict",
        tag="inference",
        summary="Predict with the function's own payload (JSON rows, an image, text)",
        success={200: "Prediction"},
        errors=_INFER_ERRORS,
        body="payload",
    ),
    Route(
        "POST",
        "/v2/models/{name}/infer",
        "infer",
        tag="inference",
        summary="Open Inference Protocol inference",
        success=_INFERENCE,
        errors=_INFER_ERRORS,
        body="inference",
    ),
    Route(
        "POST",
        "/v2/models/{name}/versions/{version}/infer",
        "infer",
        tag="inference",
        summary="Open Inference Protocol inference on one version",
        success=_INFERENCE,
        errors=_INFER_ERRORS,
        body="inference",
    ),
    Route(
        "GET",
        "/v2/health/live",
        "live",
        tag="health",
        summary="Liveness",
        success={200: "Live"},
        errors=(),
        public=True,
    ),
    Route(
        "GET",
        "/v2/health/ready",
        "ready",
        tag="health",
        summary="Readiness: every function loaded",
        success={200: "Readiness", 503: "Readiness"},
        errors=(),
        public=True,
    ),
    Route("GET", "/v2", "server_metadata", tag="metadata", summary="Server metadata", success={200: "ServerMetadata"}),
    Route(
        "GET",
        "/v2/models/{name}",
        "model_metadata",
        tag="metadata",
        summary="Model metadata",
        success=_METADATA,
        errors=(401, 404, 503),
    ),
    Route(
        "GET",
        "/v2/models/{name}/versions/{version}",
        "model_metadata",
        tag="metadata",
        summary="Model metadata of one version",
        success=_METADATA,
        errors=(401, 404, 503),
    ),
    Route(
        "GET",
        "/v2/models/{name}/ready",
        "model_ready",
        tag="health",
        summary="Model readiness",
        success=_READY,
        errors=(401, 404),
    ),
    Route(
        "GET",
        "/v2/models/{name}/versions/{version}/ready",
        "model_ready",
        tag="health",
        summary="Model readiness of one version",
        success=_READY,
        errors=(401, 404),
    ),
    Route(
        "GET",
        "/functions",
        "list_functions",
        tag="functions",
        summary="The functions served",
        success={200: "FunctionList"},
    ),
    Route("GET", "/", "list_functions", tag="functions", summary="The functions served", success={200: "FunctionList"}),
    Route(
        "GET",
        "/metrics",
        "metrics",
        tag="monitoring",
        summary="Prometheus metrics: requests, errors, latency, batches, queue depth, cache, drift",
        success={200: "Metrics"},
        errors=(401, 404),
    ),
    Route("GET", "/openapi.json", "openapi", tag="documentation", summary="This document", success={200: "OpenAPI"}),
    Route("GET", "/docs", "docs", tag="documentation", summary="Swagger UI", success={200: "HTML"}),
    Route(
        "GET", "/docs/{asset}", "docs_asset", tag="documentation", summary="Swagger UI's files", success={200: "File"}
    ),
)

NAMED = ("/functions/", "/v2/models/")
"""Paths under these prefixes carry a function name as their next segment."""


def normalise(path: str) -> str:
    """One spelling per path: a leading slash, no trailing one (`/docs/` is `/docs`)."""
    stripped = path.strip("/")
    return "/" + stripped if stripped else "/"


def match(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route for a request, or the 404/405 a client can act on."""
    allowed = None
    for route in ROUTES:
        found = route.pattern.fullmatch(path)
        if found is None:
            continue
        if route.method == method or (method == "HEAD" and route.method == "GET"):
            return route, found.groupdict()
        allowed = allowed or route.method
    if allowed is not None:
        raise MethodNotAllowed(f"{method} is not allowed on {path}; use {allowed}")
    raise NotFound(f"no route {path}; try POST /functions/{{name}} or /v2/models/{{name}}/infer")


def function_of(path: str) -> str | None:
    """The function a path names, if any: for logs and metric dimensions before routing."""
    for prefix in NAMED:
        if path.startswith(prefix):
            name = path[len(prefix) :].split("/", 1)[0]
            return name or None
    return None


def function_routes(name: str) -> list[tuple[str, str]]:
    """(method, path) of every route that concerns one function, its name filled in (a
    version stays a `{version}` parameter), and the health probes: what an API fronting
    only that function exposes (the CDK app's HTTP API)."""
    return [
        (r.method, r.path_for(name=name, version="{version}")) for r in ROUTES if r.public or "name" in r.parameters
    ]
