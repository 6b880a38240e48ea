"""HTTP triggers: API Gateway REST (v1), HTTP API (v2), Lambda Function URLs and
Application Load Balancers. Each turns its event into the core `HttpRequest`, so routes,
JSON and status codes are exactly the local server's, and renders the response back in
the shape that trigger expects."""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any
from urllib.parse import unquote

from handlers.aws.app import LAMBDA_PAYLOAD_LIMIT
from handlers.aws.kind import EventKind
from modelfn.errors import BadRequest, PayloadTooLarge
from modelfn.http import JSON_TYPE, MB, HttpRequest, HttpResponse, failure, json_text
from modelfn.routes import function_of

BASE_PATH = os.environ.get("MODELFN_BASE_PATH", "")
TEXT_TYPES = ("application/json", "text/")
# the statuses the core answers with; `http.HTTPStatus` would cost an enum build at import
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _body(event: dict[str, Any]) -> bytes:
    body = event.get("body") or ""
    if not event.get("isBase64Encoded"):
        return body.encode("utf-8")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("the request body is marked base64-encoded but is not valid base64") from None


def _joined(multi: dict[str, list[str] | None]) -> dict[str, str]:
    return {name: ", ".join(values) for name, values in multi.items() if values}


def _strip_prefix(path: str, prefix: str) -> str:
    prefix = "/" + prefix.strip("/")
    if prefix != "/" and (path == prefix or path.startswith(prefix + "/")):
        return path[len(prefix) :] or "/"
    return path


def _base_path(path: str) -> str:
    """A custom domain's base path mapping (MODELFN_BASE_PATH) is not part of our routes."""
    return _strip_prefix(path, BASE_PATH) if BASE_PATH else path


class HttpEvent(EventKind):
    """The shared flow: request in, the core `Service`, response out."""

    def serve(self, event: Any, context: Any) -> dict[str, Any]:
        try:
            request = self.route(self.request(event))
        except BadRequest as exc:
            response = failure(exc)
        else:
            if self.app.served is None:  # several functions: the route says which
                self.app.telemetry.name_function(function_of(request.path))
            response = self.app.service.handle(request)
        body, encoded = self.encode(response)
        self.report(response)
        return self.render(response, body, encoded, event)

    def route(self, request: HttpRequest) -> HttpRequest:
        """`POST /` goes to the function this Lambda serves: a Function URL needs no path."""
        if request.method == "POST" and request.path == "/" and self.app.served:
            request.path = f"/functions/{self.app.served}"
        return request

    def encode(self, response: HttpResponse) -> tuple[str, bool]:
        """The body as Lambda carries it, and whether that is base64 (bytes that are not text)."""
        if isinstance(response.body, bytes):
            if response.content_type.startswith(TEXT_TYPES):
                text, encoded = response.body.decode("utf-8"), False
            else:
                text, encoded = base64.b64encode(response.body).decode("ascii"), True
        else:
            text, encoded = json_text(response.body), False
        if len(text) > LAMBDA_PAYLOAD_LIMIT:
            too_large = PayloadTooLarge(
                f"the response is {len(text) / MB:.1f} MB, over Lambda's 6 MB limit: send fewer rows per request"
            )
            response.status, response.body = too_large.status, too_large.to_body()
            response.headers = {"content-type": JSON_TYPE}
            return json_text(response.body), False
        return text, encoded

    def report(self, response: HttpResponse) -> None:
        telemetry = self.app.telemetry
        telemetry.metric("Errors", 1 if response.status >= 500 else 0)
        if response.status >= 400:
            message = response.body.get("error") if isinstance(response.body, dict) else None
            level = telemetry.error if response.status >= 500 else telemetry.warning
            level("request failed", status=response.status, error=message)

    def path(self, event: dict[str, Any]) -> str:
        raise NotImplementedError

    def request(self, event: dict[str, Any]) -> HttpRequest:
        raise NotImplementedError

    def render(self, response: HttpResponse, body: str, encoded: bool, event: dict[str, Any]) -> dict[str, Any]:
        return {
            "statusCode": response.status,
            "headers": dict(response.headers),
            "body": body,
            "isBase64Encoded": encoded,
        }


class ApiGatewayV1(HttpEvent):
    """REST APIs (and HTTP APIs with payload format 1.0): `multiValueHeaders` win over `headers`."""

    name = "apigw-rest"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        return (
            isinstance(event, dict)
            and "httpMethod" in event
            and isinstance(event.get("requestContext"), dict)
            and "elb" not in event["requestContext"]
        )

    def path(self, event: dict[str, Any]) -> str:
        return _base_path(event.get("path") or "/")

    def request(self, event: dict[str, Any]) -> HttpRequest:
        headers = _joined(event["multiValueHeaders"]) if event.get("multiValueHeaders") else event.get("headers") or {}
        return HttpRequest(event["httpMethod"], self.path(event), headers, _body(event))


def _v2_context(event: Any) -> dict[str, Any] | None:
    """The request context of a payload format 2.0 event (an HTTP API's or a Function URL's)."""
    if not isinstance(event, dict) or event.get("version") != "2.0":
        return None
    context = event.get("requestContext")
    return context if isinstance(context, dict) and "http" in context else None


class HttpApiV2(HttpEvent):
    """HTTP APIs, payload format 2.0: headers arrive comma-joined; a named stage prefixes rawPath."""

    name = "apigw-http"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        context = _v2_context(event)
        return context is not None and ".lambda-url." not in str(context.get("domainName", ""))

    def path(self, event: dict[str, Any]) -> str:
        raw = event.get("rawPath") or "/"
        path = unquote(raw) if "%" in raw else raw
        stage = event["requestContext"].get("stage") or "$default"
        if stage != "$default":
            path = _strip_prefix(path, stage)
        return _base_path(path)

    def request(self, event: dict[str, Any]) -> HttpRequest:
        method = event["requestContext"]["http"]["method"]
        return HttpRequest(method, self.path(event), event.get("headers") or {}, _body(event))


class FunctionUrl(HttpApiV2):
    """Lambda Function URLs send the 2.0 payload from a `*.lambda-url.*` domain."""

    name = "function-url"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        context = _v2_context(event)
        return context is not None and ".lambda-url." in str(context.get("domainName", ""))


class ApplicationLoadBalancer(HttpEvent):
    """ALB targets: the response must use multi-value headers exactly when the request did,
    and carry a status description."""

    name = "alb"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        return isinstance(event, dict) and "elb" in (event.get("requestContext") or {})

    def path(self, event: dict[str, Any]) -> str:
        return _base_path(event.get("path") or "/")

    def request(self, event: dict[str, Any]) -> HttpRequest:
        headers = _joined(event["multiValueHeaders"]) if "multiValueHeaders" in event else event.get("headers") or {}
        return HttpRequest(event["httpMethod"], self.path(event), headers, _body(event))

    def render(self, response: HttpResponse, body: str, encoded: bool, event: dict[str, Any]) -> dict[str, Any]:
        status = response.status
        rendered: dict[str, Any] = {
            "statusCode": status,
            "statusDescription": f"{status} {REASONS.get(status, '')}".strip(),
            "body": body,
            "isBase64Encoded": encoded,
        }
        if "multiValueHeaders" in event:
            rendered["multiValueHeaders"] = {k: [v] for k, v in response.headers.items()}
        else:
            rendered["headers"] = dict(response.headers)
        return rendered


HTTP_KINDS: list[type[HttpEvent]] = [HttpApiV2, FunctionUrl, ApiGatewayV1, ApplicationLoadBalancer]
"""Each recognises events no other does (a Function URL's 2.0 payload by its domain), so the
order only decides how soon the commonest is found."""
