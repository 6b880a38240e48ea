"""A request and a response as every provider's adapter builds and renders them, without a
web framework, and the checks made on them before any model work: the API key and the body
limit. What happens in between is `modelfn.service.Service`."""

from __future__ import annotations

import json
import os
from typing import Any

from modelfn.errors import PayloadTooLarge, Unauthorized, error_body

MB = 1024 * 1024


class HttpRequest:
    """A method, a path without its trailing slash, headers with lower-case names, a body. (A
    plain class: a dataclass would be generated at import, on the Lambda cold-start path.)"""

    __slots__ = ("body", "headers", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.method = method.upper()
        self.path = "/" + path.strip("/") if path not in ("", "/") else "/"
        if not headers:
            self.headers = {}
        else:
            # lower-case already, as API Gateway's HTTP APIs and Function URLs send them? (one
            # join and one lower() take a third of the time of str.islower name by name)
            names = "".join(headers)
            self.headers = dict(headers) if names == names.lower() else {k.lower(): v for k, v in headers.items()}
        self.body = body

    def __repr__(self) -> str:
        return f"HttpRequest({self.method!r}, {self.path!r}, {len(self.body)} bytes)"

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


JSON_TYPE = "application/json"
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _load_orjson() -> Any:
    try:
        import orjson
    except ImportError:
        return None
    return orjson


orjson: Any = _load_orjson()
"""orjson where it is installed (the `aws` and `server` extras): 5-10x faster than the standard
library both ways. Every use falls back to `json`, which decides and words what orjson refuses."""
_NON_STR_KEYS = orjson.OPT_NON_STR_KEYS if orjson else 0


def json_bytes(value: Any) -> bytes:
    """The one JSON encoding of results and answers: compact, UTF-8, and NaN refused rather
    than written as the invalid `NaN` token."""
    if orjson is not None:
        try:
            data: bytes = orjson.dumps(value, option=_NON_STR_KEYS)
        except TypeError:  # orjson.JSONEncodeError: integers past 64 bits, types it does not know
            pass
        else:
            if b"null" not in data:  # orjson writes NaN as null; the standard encoder refuses it
                return data
    return _encode(value).encode()


def json_text(value: Any) -> str:
    """`json_bytes` as text."""
    return json_bytes(value).decode()


class HttpResponse:
    """A status, a body (a JSON value, or bytes sent as they are) and headers. (A plain
    class: a dataclass would be generated at import, on the Lambda cold-start path.)"""

    __slots__ = ("_encoded", "body", "headers", "status")

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else {"content-type": JSON_TYPE}
        self._encoded: bytes | None = None

    def encoded(self) -> bytes:
        if self._encoded is None:
            self._encoded = self.body if isinstance(self.body, bytes) else json_bytes(self.body)
        return self._encoded

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", JSON_TYPE)


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


def failure(exc: BaseException) -> HttpResponse:
    status, body = error_body(exc)
    return HttpResponse(status, body)
