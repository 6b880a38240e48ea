"""Running the Cloud Functions entry points here on an event file (see events/gcp/): a
CloudEvent (`specversion`), a raw Pub/Sub push body (`message` + `subscription`) or an HTTP
request description (`method`, `path`, ...). Each is one kind, recognised in order."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from handlers import gcp_functions
from handlers.gcp import instance
from handlers.gcp.pubsub import handle_push
from modelfn.codecs import b64decode
from modelfn.errors import BadRequest

JSON = "application/json"


class CloudEventFile:
    @staticmethod
    def recognise(event: dict[str, Any]) -> bool:
        return "specversion" in event

    @staticmethod
    def run(function: str, event: dict[str, Any]) -> Any:
        data = b64decode(event["data_base64"], "data_base64") if "data_base64" in event else event.get("data")
        return gcp_functions.handle_event(event, data, function)


class PushFile:
    @staticmethod
    def recognise(event: dict[str, Any]) -> bool:
        return "subscription" in event and "message" in event

    @staticmethod
    def run(function: str, event: dict[str, Any]) -> Any:
        response = handle_push(event, function)
        return {"status": response.status, "body": response.body}


class HttpFile:
    @staticmethod
    def recognise(event: dict[str, Any]) -> bool:
        return "method" in event or "path" in event

    @staticmethod
    def run(function: str, event: dict[str, Any]) -> Any:
        import flask

        body = event.get("body", b"")
        headers = {k.lower(): str(v) for k, v in (event.get("headers") or {}).items()}
        if not isinstance(body, bytes | str):
            body = json.dumps(body)
            headers.setdefault("content-type", JSON)
        path = event.get("path") or f"/functions/{function}"
        with flask.Flask(__name__).test_request_context(
            path, method=event.get("method", "POST"), headers=headers, data=body
        ):
            response = gcp_functions.serve_http(flask.request)
        return {
            "status": response.status_code,
            "headers": {k.lower(): v for k, v in response.headers.items()},
            "body": json.loads(response.get_data()),
        }


KINDS: list[type[CloudEventFile | PushFile | HttpFile]] = [CloudEventFile, PushFile, HttpFile]


def local_invoke(function_name: str, event: dict[str, Any]) -> Any:
    """Run the function an event file is for, as a deployment of `function_name` would:
    that function alone, loaded at start."""
    with _deployed(function_name):
        instance.service().registry.load_all()
        for kind in KINDS:
            if kind.recognise(event):
                return kind.run(function_name, event)
    raise BadRequest("not a CloudEvent, a Pub/Sub push body or an HTTP request description; see events/gcp/")


@contextmanager
def _deployed(function_name: str) -> Iterator[None]:
    previous = os.environ.get("MODELFN_FUNCTION")
    os.environ["MODELFN_FUNCTION"] = function_name
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MODELFN_FUNCTION"]
        else:
            os.environ["MODELFN_FUNCTION"] = previous
