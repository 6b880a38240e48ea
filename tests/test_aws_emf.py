"""The Lambda adapter's per-invocation EMF line, made from a cached template, parses back to
exactly the document a JSON encoder would write; and an HTTP API (v2) event is translated and
answered as the same request sent by a REST API (v1) is."""

from __future__ import annotations

import base64
import copy
import io
import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from handlers.aws.http import ApiGatewayV1, HttpApiV2
from handlers.local.aws import LocalContext
from modelfn.errors import BadRequest
from modelfn.http import HttpRequest

EVENTS = Path(__file__).resolve().parent.parent / "events" / "aws"

INVOCATIONS: list[tuple[str | None, str, list[tuple[str, float, str]]]] = [
    (
        "breast-cancer",
        "apigw-http",
        [("Invocations", 1, "Count"), ("Errors", 0, "Count"), ("Latency", 0.0336, "Milliseconds")],
    ),
    (
        "breast-cancer",
        "apigw-http",
        [("Invocations", 1, "Count"), ("Errors", 1, "Count"), ("Latency", 12.5, "Milliseconds")],
    ),
    (
        None,
        "sqs",
        [("Invocations", 1, "Count"), ("BatchSize", 2, "Count"), ("BatchSize", 3, "Count"), ("Errors", 0, "Count")],
    ),
    (
        "iris",
        "alb",
        [("Invocations", 1, "Count"), ('odd%s"name', 7, "None"), ("Latency", float("nan"), "Milliseconds")],
    ),
    (
        "iris",
        "sqs",
        [("Invocations", 1, "Count"), ("BatchSize", float("inf"), "Count"), ("BatchSize", 2.5, "Count")],
    ),
    (
        "breast-cancer",
        "apigw-http",
        [("Invocations", 1, "Count"), ("Errors", 0, "Count"), ("Latency", 1e-07, "Milliseconds")],
    ),
]


def expected_document(
    function: str | None, trigger: str, recorded: list[tuple[str, float, str]], rid: str
) -> dict[str, Any]:
    """What the template's line must say, built the plain way."""
    dimensions = {"service": "modelfn", **({"function": function} if function else {})}
    values: dict[str, Any] = {}
    units: dict[str, str] = {}
    for name, number, unit in recorded:
        units.setdefault(name, unit)
        value = number if math.isfinite(number) else None  # NaN and Infinity are written as null
        if name in values:
            held = values[name]
            values[name] = [*held, value] if isinstance(held, list) else [held, value]
        else:
            values[name] = value
    directive = {
        "Namespace": "modelfn",
        "Dimensions": [list(dimensions)],
        "Metrics": [{"Name": name, "Unit": unit} for name, unit in units.items()],
    }
    return {
        "_aws": {"CloudWatchMetrics": [directive], "Timestamp": None},
        **dimensions,
        "trigger": trigger,
        **values,
        "function_request_id": rid,
    }


def test_emf_lines_parse_back_to_the_recorded_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from handlers.aws.telemetry import Telemetry

    monkeypatch.delenv("POWERTOOLS_SERVICE_NAME", raising=False)
    monkeypatch.delenv("POWERTOOLS_METRICS_NAMESPACE", raising=False)
    out = io.StringIO()
    telemetry = Telemetry(stream=out)
    expected = []
    for i, (function, trigger, recorded) in enumerate(INVOCATIONS * 2):  # the second round reuses the templates
        ctx = LocalContext("modelfn-test")
        ctx.aws_request_id = f"req-{i}"
        telemetry.begin(ctx, trigger, function)
        for name, value, unit in recorded:
            telemetry.metric(name, value, unit)
        telemetry.end()
        expected.append(expected_document(function, trigger, recorded, f"req-{i}"))
    lines = out.getvalue().splitlines()
    assert len(lines) == len(expected)
    for line, want in zip(lines, expected, strict=True):
        document = json.loads(line)
        assert next(iter(document)) == "_aws"  # the directive leads, as Powertools writes it
        assert isinstance(document["_aws"]["Timestamp"], int) and document["_aws"]["Timestamp"] > 1.7e12
        document["_aws"]["Timestamp"] = None
        assert document == want
    assert json.loads(lines[0])["Latency"] == 0.0336 and json.loads(lines[5])["Latency"] == 1e-07


@pytest.mark.parametrize(
    ("nanoseconds", "milliseconds"),
    [(99_588, 0.1), (99_499, 0.099), (0, 0.0), (1_234_567_891, 1234.568), (7_000_000, 7.0), (12_345, 0.012)],
)
def test_durations_are_milliseconds_to_the_microsecond(nanoseconds: int, milliseconds: float) -> None:
    from handlers.aws.telemetry import Telemetry

    out = io.StringIO()
    telemetry = Telemetry(stream=out)
    telemetry.begin(None, "direct", "breast-cancer")
    telemetry.milliseconds("Latency", nanoseconds)
    telemetry.end()
    telemetry.begin(None, "direct", "breast-cancer")  # twice in one invocation: a list, as `metric` makes
    telemetry.milliseconds("Latency", nanoseconds)
    telemetry.milliseconds("Latency", nanoseconds + 2_000_000)
    telemetry.end()
    once, twice = (json.loads(line) for line in out.getvalue().splitlines())
    assert once["Latency"] == milliseconds
    assert twice["Latency"] == [milliseconds, round(milliseconds + 2, 3)]
    assert once["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [{"Name": "Latency", "Unit": "Milliseconds"}]


def test_no_duration_is_kept_while_metrics_are_off() -> None:
    from handlers.aws.telemetry import Telemetry

    out = io.StringIO()
    telemetry = Telemetry(stream=out)
    telemetry.metrics_enabled = False
    telemetry.begin(None, "direct", "breast-cancer")
    telemetry.milliseconds("Latency", 5_000_000)
    assert telemetry.metrics == {}
    telemetry.end()
    assert out.getvalue() == ""


def test_emf_line_without_a_request_id_says_null() -> None:
    from handlers.aws.telemetry import Telemetry

    out = io.StringIO()
    telemetry = Telemetry(stream=out)
    telemetry.begin(None, "direct", "breast-cancer")
    telemetry.metric("Invocations", 1)
    telemetry.end()
    assert json.loads(out.getvalue())["function_request_id"] is None


SAMPLE = json.loads((EVENTS / "apigw-v2.json").read_text())


def v2(body: str | None = SAMPLE["body"], **changes: Any) -> dict[str, Any]:
    event = copy.deepcopy(SAMPLE)
    event["body"] = body
    for key, value in changes.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


V2_EVENTS = {
    "plain": v2(),
    "base64": v2(b64(SAMPLE["body"]), isBase64Encoded=True),
    "wrong shape": v2('{"X": [[1.0]]}'),
    "base64 invalid": v2("not base64!", isBase64Encoded=True),
    "no body": v2(None),
    "empty body": v2(""),
    "unicode body": v2('{"X": "é"}'),
    "odd content type": v2(headers={"content-type": "Text/Plain; charset=UTF-8"}),
    "json with charset": v2(headers={"content-type": "application/json; charset=utf-8"}),
    "no headers": v2(headers=None),
    "mixed-case headers": v2(headers={"Content-Type": "application/json", "X-Api-Key": "k"}),
    "cookies and query": v2(cookies=["a=1", "b=2"], rawQueryString="x=1&x=2", queryStringParameters={"x": "1,2"}),
    "percent-encoded path": v2(rawPath="/functions/breast%2Dcancer"),
    "no path": v2(rawPath=None),
    "trailing slash": v2(rawPath="/functions/breast-cancer/"),
}


def as_rest_api(event: dict[str, Any]) -> dict[str, Any]:
    """The same request as API Gateway's REST API (payload 1.0) would send it."""
    return {
        "version": "1.0",
        "httpMethod": event["requestContext"]["http"]["method"],
        "path": event.get("rawPath") or "/",
        "headers": event.get("headers"),
        "multiValueHeaders": None,
        "requestContext": {"stage": "$default", "requestId": "r"},
        "body": event.get("body"),
        "isBase64Encoded": event.get("isBase64Encoded", False),
    }


@pytest.mark.parametrize("name", sorted(V2_EVENTS))
def test_http_api_v2_request_is_the_rest_api_request(name: str) -> None:
    """HTTP API (payload 2.0) and REST API (1.0) events for one request translate alike."""
    event = V2_EVENTS[name]
    rest = as_rest_api(event)
    if "%" in (event.get("rawPath") or ""):  # REST APIs hand the path over decoded
        rest["path"] = unquote(event["rawPath"])
    try:
        want = ApiGatewayV1(None).request(copy.deepcopy(rest))  # type: ignore[arg-type]  # a request needs no app
    except BadRequest as exc:
        with pytest.raises(BadRequest, match=str(exc)):
            HttpApiV2(None).request(copy.deepcopy(event))  # type: ignore[arg-type]
        return
    got = HttpApiV2(None).request(copy.deepcopy(event))  # type: ignore[arg-type]
    assert (got.method, got.path, got.headers, got.body) == (want.method, want.path, want.headers, want.body)


@pytest.mark.parametrize("name", sorted(V2_EVENTS))
def test_handler_answers_http_api_events_as_the_rest_api(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from handlers import aws_lambda
    from handlers.aws import app

    monkeypatch.setenv("MODELFN_FUNCTION", "breast-cancer")
    app.reset()
    event = V2_EVENTS[name]
    if "%" in (event.get("rawPath") or ""):  # REST APIs hand the path over decoded
        rest = as_rest_api(event) | {"path": unquote(event["rawPath"])}
    else:
        rest = as_rest_api(event)
    got = aws_lambda.handler(copy.deepcopy(event), LocalContext("modelfn-test"))
    want = aws_lambda.handler(rest, LocalContext("modelfn-test"))
    assert got == want
    assert got["statusCode"] == STATUS.get(name, 200)


STATUS = {
    "base64 invalid": 400,
    "no body": 400,
    "empty body": 400,
    "unicode body": 422,
    "odd content type": 415,
    "wrong shape": 422,
}


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "application/json", "x-api-key": "k"},
        {"Content-Type": "application/json", "x-api-key": "k"},
        {"x-1": "a", "123": "b"},  # names without letters
        {"İd": "dotted capital I", "ß": "sharp s"},  # lowering that lengthens, letters already lower
        {"A": "upper", "a": "lower"},  # two spellings of one name: the later wins, as before
        {"ǅ": "titlecase"},
    ],
)
def test_request_headers_are_the_lowered_names(headers: dict[str, str]) -> None:
    original = dict(headers)
    request = HttpRequest("POST", "/functions/x", headers, b"")
    assert request.headers == {k.lower(): v for k, v in original.items()}
    assert request.headers is not headers and headers == original
