"""The local server's OpenAPI document, completed with what FastAPI cannot infer from routes
that answer raw JSON: each operation's success body, the error body `{"error", "code",
"detail"?}` for every status it can answer, the Open Inference Protocol request, and the
names of the functions served. Kept accurate by the schemathesis run in tests/test_fuzz.py."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

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
# (method, path) -> ({status: success schema}, error statuses)
OPERATIONS: dict[tuple[str, str], tuple[dict[int, str], tuple[int, ...]]] = {
    ("get", "/v2/health/live"): ({200: "Live"}, ()),
    ("get", "/v2/health/ready"): ({200: "Readiness", 503: "Readiness"}, ()),
    ("get", "/v2"): ({200: "ServerMetadata"}, (401,)),
    ("get", "/functions"): ({200: "FunctionList"}, (401,)),
    ("get", "/v2/models/{name}"): ({200: "ModelMetadata"}, (401, 404, 503)),
    ("get", "/v2/models/{name}/ready"): ({200: "ModelReadiness", 503: "ModelReadiness"}, (401, 404)),
    ("post", "/v2/models/{name}/infer"): ({200: "InferenceResponse"}, (400, 401, 404, 413, 422, 503)),
    ("post", "/functions/{name}"): ({200: "Prediction"}, (400, 401, 404, 413, 415, 422, 503)),
}


def document(app: FastAPI, functions: list[str]) -> dict[str, Any]:
    """`app.openapi()` for the local server: FastAPI's document, completed once and cached."""
    if app.openapi_schema is None:
        complete(FastAPI.openapi(app), functions)  # FastAPI.openapi caches it on the app
    return app.openapi_schema  # type: ignore[return-value]


def complete(doc: dict[str, Any], functions: list[str]) -> dict[str, Any]:
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body: never sent by these routes
        schemas.pop(unused, None)
    schemas.update(SCHEMAS)
    components["responses"] = {
        f"Error{status}": {"description": text, "content": {JSON: {"schema": ref("Error")}}}
        for status, text in ERRORS.items()
    }
    for path, methods in doc.get("paths", {}).items():
        for method, operation in methods.items():
            described = OPERATIONS.get((method, path))
            if described is None:
                continue
            successes, errors = described
            responses: dict[str, Any] = {
                str(status): {"description": name, "content": {JSON: {"schema": ref(name)}}}
                for status, name in successes.items()
            }
            responses |= {str(status): {"$ref": f"#/components/responses/Error{status}"} for status in errors}
            operation["responses"] = responses
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") == "name" and functions:
                    parameter["schema"] = {"type": "string", "enum": functions, "title": "Function"}
            if path == "/v2/models/{name}/infer":
                operation["requestBody"]["content"][JSON]["schema"] = ref("InferenceRequest")
    return doc
