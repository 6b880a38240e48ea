"""No secret and no payload value in the logs, at the default settings: the local server (a
`modelfn serve` subprocess, its whole output), the Lambda handler under the real runtime loop
(its JSON log lines), and the Cloud Functions and Azure adapters in-process (every record, at
DEBUG) are sent requests and events whose payloads carry a marker value, with an API key set,
some with the right key and some with a wrong one that carries the marker too. The logs must
hold neither the marker nor the key, yet show that the requests were served and refused.

Error messages, and so the log lines that report refused records, may name an input or a
field (that is what tells an operator why), never the values a client sent."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import wait_until_ready
from support.lambda_runtime import RuntimeApi, lambda_environment, start_runtime

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
EVENTS = ROOT / "events"
MARKER = "PRIVATE7f3a9cMARKER"
KEY = "sk-SECRET-4b1d9e07c2"
ROW = [0.25] * 30


def payloads() -> list[tuple[str, bytes, str]]:
    """(function, body, content type): requests whose values carry the marker, good and bad."""
    image = base64.b64encode(MARKER.encode() * 4).decode()
    oip = {"id": MARKER, "inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
    return [
        ("breast-cancer", json.dumps({"X": ROW}).encode(), "application/json"),
        ("breast-cancer", json.dumps({"X": ROW, "note": MARKER}).encode(), "application/json"),
        ("breast-cancer", json.dumps({"X": [MARKER] * 30}).encode(), "application/json"),
        ("breast-cancer", json.dumps({"X": MARKER}).encode(), "application/json"),
        ("breast-cancer", f'{{"X": ["{MARKER}", 1'.encode(), "application/json"),
        ("breast-cancer", MARKER.encode(), "text/plain"),
        ("breast-cancer", MARKER.encode(), "application/json"),
        ("breast-cancer", json.dumps([{"X": ROW}, {"X": [MARKER, 1.0]}]).encode(), "application/json"),
        ("breast-cancer/infer", json.dumps(oip).encode(), "application/json"),
        ("digits", json.dumps({"image": image}).encode(), "application/json"),
        ("digits", json.dumps({"image": MARKER + "!!"}).encode(), "application/json"),
        ("digits", b"\x89PNG\r\n\x1a\n" + MARKER.encode(), "image/png"),
    ]


def path_of(function: str) -> str:
    name, _, infer = function.partition("/")
    return f"/v2/models/{name}/infer" if infer else f"/functions/{name}"


def assert_private(output: str) -> None:
    assert MARKER not in output, f"a payload value reached the logs: {_around(output, MARKER)}"
    assert KEY not in output, f"the API key reached the logs: {_around(output, KEY)}"


def _around(text: str, needle: str) -> str:
    at = text.find(needle)
    return text[max(0, at - 300) : at + 100]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The local server


def test_local_server_logs_neither_payloads_nor_the_key(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "MODELFN_API_KEY": KEY, "MODELFN_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "modelfn.cli", "--functions-dir", str(FUNCTIONS), "serve", "breast-cancer"]
    command += ["digits", "--host", "127.0.0.1", "--port", str(port)]  # the default log level: info
    with log.open("wb") as sink:
        server = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    statuses = []
    try:
        try:
            wait_until_ready(base, server)
        except AssertionError:
            raise AssertionError(log.read_text()) from None
        keys = [{"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}, {"x-api-key": f"{MARKER}-{KEY[:4]}"}, {}]
        for index, (function, body, content_type) in enumerate(payloads()):
            headers = {"content-type": content_type, **keys[index % len(keys)]}
            statuses.append(httpx.post(f"{base}{path_of(function)}", content=body, headers=headers).status_code)
        for headers in keys:
            httpx.get(f"{base}/v2/models/breast-cancer", headers=headers)
            httpx.get(f"{base}/openapi.json", headers=headers)
    finally:
        server.terminate()
        server.wait(30)
    output = log.read_text()
    assert {200, 401, 422} <= set(statuses), statuses
    assert '"POST /functions/breast-cancer HTTP/1.1" 422' in output  # the access log was written
    assert_private(output)


# AWS Lambda, under the runtime interface client


def lambda_http(function: str, body: bytes, content_type: str, headers: dict[str, str]) -> dict[str, Any]:
    event = json.loads((EVENTS / "aws" / "apigw-v2.json").read_text())
    path = path_of(function)
    event.update(rawPath=path, body=base64.b64encode(body).decode(), isBase64Encoded=True)
    event["requestContext"]["http"].update(path=path)
    event["headers"] = {"content-type": content_type, **headers}
    return event


def lambda_events(bucket_root: Path) -> list[dict[str, Any]]:
    bodies = [body for function, body, _ in payloads() if function == "breast-cancer"]
    sqs = json.loads((EVENTS / "aws" / "sqs.json").read_text())
    template = sqs["Records"][0]
    sqs["Records"] = [{**template, "messageId": f"m-{i}", "body": b.decode()} for i, b in enumerate(bodies)]
    sns = json.loads((EVENTS / "aws" / "sns.json").read_text())
    sns["Records"][0]["Sns"]["Message"] = bodies[2].decode()
    eventbridge = json.loads((EVENTS / "aws" / "eventbridge.json").read_text())
    eventbridge["detail"] = {"X": ROW, "note": MARKER}
    s3 = json.loads((EVENTS / "aws" / "s3-put.json").read_text())
    records = []
    for index, body in enumerate(bodies):
        key = f"incoming/object-{index}.json"
        (bucket_root / "modelfn-examples" / key).parent.mkdir(parents=True, exist_ok=True)
        (bucket_root / "modelfn-examples" / key).write_bytes(body)
        record = json.loads(json.dumps(s3["Records"][0]))
        record["s3"]["object"]["key"] = key
        records.append(record)
    keys = [{"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}, {"x-api-key": f"{MARKER}-{KEY[:4]}"}, {}]
    http = [
        lambda_http(function, body, content_type, keys[index % len(keys)])
        for index, (function, body, content_type) in enumerate(payloads())
        if not function.startswith("digits")
    ]
    direct = [{"X": ROW, "note": MARKER}, {"X": [MARKER] * 30}, {"X": ROW}]
    return [*http, sqs, sns, eventbridge, {"Records": records}, *direct]


def test_lambda_logs_neither_payloads_nor_the_key(tmp_path: Path) -> None:
    pytest.importorskip("awslambdaric", reason="the runtime loop needs awslambdaric")
    bucket_root = tmp_path / "s3"
    events = lambda_events(bucket_root)
    with RuntimeApi() as api:
        env = lambda_environment(
            api,
            "modelfn-breast-cancer",
            MODELFN_FUNCTION="breast-cancer",
            MODELFN_FUNCTIONS_DIR=str(FUNCTIONS),
            MODELFN_CACHE_DIR=str(tmp_path / "cache"),
            MODELFN_LOCAL_S3=str(bucket_root),
            MODELFN_API_KEY=KEY,
        )
        process = start_runtime("handlers.local.aws.handler", env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            outcomes = [api.invoke(event) for event in events]
        finally:
            process.kill()
            output = process.communicate(timeout=30)[0].decode(errors="replace")
    kinds = [o.kind for o in outcomes]
    assert "response" in kinds and "error" in kinds, kinds
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    messages = {line.get("message") for line in lines}
    assert {"request failed", "message failed", "object failed", "invocation failed"} <= messages, messages
    assert_private(output)


# Google Cloud Functions and Azure Functions, in-process, every record at DEBUG


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from handlers.gcp import instance

    monkeypatch.setenv("MODELFN_API_KEY", KEY)
    monkeypatch.delenv("MODELFN_FUNCTION", raising=False)
    monkeypatch.setattr(instance, "_services", {})
    yield


def _all_output(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    records = "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    return "\n".join([records, captured.out, captured.err])


def test_cloud_functions_log_neither_payloads_nor_the_key(
    keyed: None, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    import flask

    from handlers import gcp_functions
    from handlers.gcp.pubsub import handle_message

    statuses = []
    with caplog.at_level(logging.DEBUG):
        keys = [{"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}, {"x-api-key": f"{MARKER}-{KEY[:4]}"}, {}]
        for index, (function, body, content_type) in enumerate(payloads()):
            headers = {"content-type": content_type, **keys[index % len(keys)]}
            with flask.Flask(__name__).test_request_context(
                path_of(function), method="POST", headers=headers, data=body
            ):
                statuses.append(gcp_functions.serve_http(flask.request).status_code)
        outcomes = []
        for function, body, content_type in payloads():
            message = {
                "data": base64.b64encode(body).decode(),
                "messageId": "1",
                "attributes": {"function": function.partition("/")[0], "content-type": content_type},
            }
            outcomes.append(handle_message(message)["outcome"])
    assert {200, 401, 422} <= set(statuses), statuses
    assert {"logged", "dropped"} <= set(outcomes), outcomes
    output = _all_output(caplog, capsys)
    assert "dropped Pub/Sub message" in output
    assert_private(output)


def test_azure_functions_log_neither_payloads_nor_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: Any
) -> None:
    import azure.functions as func
    from azure.functions.queue import QueueMessage

    from handlers.az.blob import predict_blob
    from handlers.az.http import serve
    from handlers.az.queue import predict_message
    from handlers.azure_functions import ServedFunction
    from modelfn.errors import ModelfnError
    from modelfn.spec import load_spec

    monkeypatch.setenv("MODELFN_API_KEY", KEY)
    served = {name: ServedFunction(load_spec(FUNCTIONS / name)) for name in ("breast-cancer", "digits")}
    statuses, refused = [], 0
    with caplog.at_level(logging.DEBUG):
        keys = [{"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}, {"x-api-key": f"{MARKER}-{KEY[:4]}"}, {}]
        for index, (function, body, content_type) in enumerate(payloads()):
            path = path_of(function)
            request = func.HttpRequest(
                "POST",
                f"https://modelfn.azurewebsites.net{path}",
                headers={"content-type": content_type, **keys[index % len(keys)]},
                route_params={"path": path.lstrip("/")},
                body=body,
            )
            statuses.append(serve(served[function.partition("/")[0]], request).status_code)
            blob = func.blob.InputStream(data=body, name=f"uploads/{index}.json", uri="http://127.0.0.1/x")
            predict_blob(served[function.partition("/")[0]], blob)
            try:
                predict_message(
                    served[function.partition("/")[0]], QueueMessage(id=str(index), body=body), "scoring-in"
                )
            except ModelfnError:
                refused += 1
    assert {200, 401, 422} <= set(statuses), statuses
    assert refused > 0
    output = _all_output(caplog, capsys)
    assert "cannot be predicted" in output and "is malformed" in output
    assert_private(output)


def test_the_marker_would_be_seen_if_it_were_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The capture is live: a line carrying the marker is found."""
    with caplog.at_level(logging.INFO):
        logging.getLogger("modelfn").info("payload %s", MARKER)
    with pytest.raises(AssertionError, match="a payload value reached the logs"):
        assert_private("\n".join(r.getMessage() for r in caplog.records))
