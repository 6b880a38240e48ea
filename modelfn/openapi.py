"""The OpenAPI document, written from the route table (`modelfn.routes`): each operation's
success body, the error body `{"error", "code", "detail"?}` for every status it can answer,
the Open Inference Protocol request, and the names of the functions served. Kept accurate
by the schemathesis run in tests/test_fuzz.py. Also Swagger UI, served from the
`swagger-ui-bundle` package's files so `/docs` works offline."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from modelfn import __version__
from modelfn.errors import NotFound
from modelfn.routes import ROUTES, Route

JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: list[str], properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties, **extra}


STRINGS = {"type": "array", "items": {"type": "string"}}
SHAPE = {"type": "array", "items": {"type": "integer"}}
TENSOR_METADATA = _object(
    ["name", "datatype", "shape"], {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": SHAPE}
)
SCHEMAS: dict[str, Any] = {
    "Error": _object(
        ["error", "code"],
        {
            "error": {"type": "string", "description": "What is wrong, in words a client can act on."},
            "code": {"type": "string", "description": "Stable machine-readable code, e.g. invalid_input."},
            "detail": {"type": "object", "description": "The input(s) or function concerned, where there is one."},
        },
        additionalProperties=False,
    ),
    "Live": _object(["live"], {"live": {"type": "boolean"}}),
    "Readiness": _object(
        ["ready"],
        {"ready": {"type": "boolean"}, "failed": {"type": "object", "additionalProperties": {"type": "string"}}},
    ),
    "ServerMetadata": _object(
        ["name", "version", "extensions"],
        {"name": {"type": "string"}, "version": {"type": "string"}, "extensions": STRINGS},
    ),
    "FunctionList": _object(["functions"], {"functions": STRINGS}),
    "TensorMetadata": TENSOR_METADATA,
    "ModelMetadata": _object(
        ["name", "versions", "platform", "inputs", "outputs"],
        {
            "name": {"type": "string"},
            "versions": STRINGS,
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": ref("TensorMetadata")},
            "outputs": {"type": "array", "items": ref("TensorMetadata")},
        },
    ),
    "ModelReadiness": _object(["name", "ready"], {"name": {"type": "string"}, "ready": {"type": "boolean"}}),
    "InferenceRequest": _object(
        ["inputs"],
        {
            "id": {"description": "Echoed back as a string."},
            "inputs": {
                "type": "array",
                "items": _object(
                    ["name", "shape", "datatype", "data"],
                    {
                        "name": {"type": "string"},
                        "shape": SHAPE,
                        "datatype": {
                            "type": "string",
                            "description": "FP32, INT64, BOOL, BYTES, ... as the model takes",
                        },
                        "data": {"description": "The values, flat or nested, row-major."},
                    },
                ),
            },
            "outputs": {"description": 'Optional: the outputs wanted, as [{"name": ...}]; all by default.'},
        },
    ),
    "InferenceResponse": _object(
        ["model_name", "model_version", "outputs"],
        {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {
                "type": "array",
                "items": _object(
                    ["name", "datatype", "shape", "data"],
                    {
                        "name": {"type": "string"},
                        "datatype": {"type": "string"},
                        "shape": SHAPE,
                        "data": {"type": "array"},
                    },
                ),
            },
        },
    ),
    "Metrics": {"type": "string", "description": "Prometheus text exposition format (text/plain; version=0.0.4)."},
    "Prediction": {
        "type": "object",
        "description": "The function's outputs by name (what its postprocess hook returns, where it has one).",
    },
}
ERRORS = {
    400: "The body cannot be parsed: malformed JSON, an empty body, invalid base64, an image that does not decode.",
    401: "The server requires an API key (x-api-key or Authorization: Bearer) and none or a wrong one was sent.",
    404: "No function by that name on this server.",
    405: "The method is not allowed on this route.",
    413: "The body is over the server's size limit.",
    415: "The function does not take this content type.",
    422: "The input does not fit the model: names, dtype, shape, NaN, values out of range.",
    503: "The function's model could not be fetched, verified or loaded.",
}
MEDIA = {"Metrics": "text/plain"}
"""Success bodies that are not JSON, by schema name."""
PAYLOAD_BODY = {
    "required": True,
    "content": {
        JSON: {"schema": {"type": ["object", "array", "string"]}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "text/plain": {"schema": {"type": "string"}},
    },
}
INFERENCE_BODY = {"required": True, "content": {JSON: {"schema": ref("InferenceRequest")}}}


@functools.lru_cache(maxsize=8)
def _document(functions: tuple[str, ...]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in ROUTES:
        if route.tag == "documentation":
            continue
        paths.setdefault(route.template, {})[route.method.lower()] = operation(route, functions)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelfn",
            "version": __version__,
            "description": "ONNX functions over the Open Inference Protocol (KServe v2) and a simple JSON route.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                f"Error{status}": {"description": text, "content": {JSON: {"schema": ref("Error")}}}
                for status, text in ERRORS.items()
            },
        },
    }


def document(functions: list[str]) -> dict[str, Any]:
    """The document for a server of these functions (built once per set of names)."""
    return _document(tuple(functions))


def operation(route: Route, functions: tuple[str, ...]) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(status): {"description": name, "content": {MEDIA.get(name, JSON): {"schema": ref(name)}}}
        for status, name in route.success.items()
    }
    responses |= {str(status): {"$ref": f"#/components/responses/Error{status}"} for status in route.errors}
    described: dict[str, Any] = {
        "tags": [route.tag],
        "summary": route.summary,
        "operationId": f"{route.operation}_{route.method.lower()}_{_slug(route.template)}",
        "responses": responses,
    }
    parameters = [parameter(p, functions) for p in route.parameters]
    if parameters:
        described["parameters"] = parameters
    if route.body == "payload":
        described["requestBody"] = PAYLOAD_BODY
    elif route.body == "inference":
        described["requestBody"] = INFERENCE_BODY
    return described


def parameter(name: str, functions: tuple[str, ...]) -> dict[str, Any]:
    if name == "name":
        schema: dict[str, Any] = {"type": "string", "title": "Function"}
        if functions:
            schema["enum"] = list(functions)
    else:
        schema = {"type": "string", "title": name.capitalize()}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _slug(template: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in template).strip("_") or "root"


SWAGGER_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "oauth2-redirect.html": "text/html; charset=utf-8",
}
ALIASES = {"oauth2-redirect": "oauth2-redirect.html"}
CDN = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>modelfn - Swagger UI</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css"><link rel="icon" href="{assets}/favicon-32x32.png"></head>
<body><div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script>
const key = new URLSearchParams(window.location.search).get("key");
window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
  requestInterceptor: (req) => {{ if (key) req.headers["x-api-key"] = key; return req; }}}});
</script></body></html>
"""


@functools.cache
def _swagger_folder() -> Path | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(str(swagger_ui_path))


def swagger_page() -> bytes:
    """Swagger UI on `/openapi.json`: its files from the `swagger-ui-bundle` package (the
    `server` extra) so it works without internet, else from a CDN."""
    assets = "/docs" if _swagger_folder() is not None else CDN
    return PAGE.format(assets=assets).encode()


def swagger_asset(name: str) -> tuple[bytes, str]:
    folder = _swagger_folder()
    name = ALIASES.get(name, name)
    if folder is None or name not in SWAGGER_FILES:
        raise NotFound(f"no file {name!r} under /docs")
    return (folder / name).read_bytes(), SWAGGER_FILES[name]
