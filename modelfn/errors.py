"""Typed errors. Every error a user can cause maps to one HTTP status, in one table."""

from __future__ import annotations

from typing import Any


class ModelfnError(Exception):
    """Base error: carries an HTTP status and a message a user can act on."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.detail:
            body["detail"] = self.detail
        return body


class SpecError(ModelfnError):
    """A `function.toml` that does not validate."""

    status = 500
    code = "invalid_spec"


class BadRequest(ModelfnError):
    """The payload cannot be parsed at all (malformed JSON, bad base64, corrupt image)."""

    status = 400
    code = "bad_request"


class InvalidInput(ModelfnError):
    """The payload parsed but does not fit the model (name, dtype, shape)."""

    status = 422
    code = "invalid_input"


class PayloadTooLarge(ModelfnError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ModelfnError):
    status = 415
    code = "unsupported_media_type"


class NotFound(ModelfnError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ModelfnError):
    status = 405
    code = "method_not_allowed"


class Unauthorized(ModelfnError):
    status = 401
    code = "unauthorized"


class ModelUnavailable(ModelfnError):
    """The model could not be fetched, verified or loaded; the function is not ready."""

    status = 503
    code = "model_unavailable"


class IntegrityError(ModelUnavailable):
    """A downloaded model does not match its `sha256` pin."""

    code = "integrity_error"


class InferenceError(ModelfnError):
    """ONNX Runtime refused a well-formed input; the model, not the client, is at fault."""

    status = 500
    code = "inference_error"


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The one mapping from any exception to (status, JSON body); never leaks a traceback."""
    if isinstance(exc, ModelfnError):
        return exc.status, exc.to_body()
    return 500, {"error": "internal error", "code": "internal_error"}
