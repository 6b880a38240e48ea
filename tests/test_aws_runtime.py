"""The real Lambda runtime loop: `python -m awslambdaric handlers.aws_lambda.handler` in a
subprocess against the loopback Runtime API, serving a sequence of events of every kind,
reporting errors the way Lambda reads them, running SnapStart's hooks, and tracing."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_server import wait_until
from support.aws import boto, moto_server, unique
from support.lambda_runtime import ROOT, RuntimeApi, lambda_environment, start_runtime

EVENTS = ROOT / "events" / "aws"

pytest.importorskip("awslambdaric", reason="the runtime loop needs awslambdaric")


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name}.json").read_text())


class Lambda:
    """One runtime process and its Runtime API; `logs()` parses what the function printed."""

    def __init__(self, api: RuntimeApi, process: subprocess.Popen[bytes]) -> None:
        self.api = api
        self.process = process
        self.output = b""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.output, _ = self.process.communicate(timeout=30)

    def logs(self) -> list[dict[str, Any]]:
        self.stop()
        lines = []
        for line in self.output.decode(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    started: list[Lambda] = []

    def run(function: str = "breast-cancer", **env: str) -> Lambda:
        api = RuntimeApi().__enter__()
        environment = lambda_environment(
            api,
            "modelfn-breast-cancer",
            MODELFN_FUNCTION=function,
            MODELFN_FUNCTIONS_DIR=str(ROOT / "functions"),
            MODELFN_CACHE_DIR=str(tmp_path / "cache"),
            HOME="/nonexistent",  # read-only, as on Lambda: the adapter must move ONNX Runtime's writes to /tmp
            **env,
        )
        process = start_runtime(
            "handlers.aws_lambda.handler", environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        started.append(Lambda(api, process))
        return started[-1]

    yield run
    for running in started:
        running.stop()
        running.api.stop()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


def expected(payload: Any) -> Any:
    from modelfn.registry import Registry

    return Registry.from_dir(ROOT / "functions", ["breast-cancer"]).load("breast-cancer").predict(payload=payload)


def test_runtime_loop_serves_a_sequence_of_events(start: Any) -> None:
    function = start()
    api = function.api
    good = json.loads(event("apigw-v2")["body"])

    http = api.invoke(event("apigw-v2"))
    assert http.kind == "response" and http.headers["content-type"] == "application/json"
    assert http.json()["statusCode"] == 200 and json.loads(http.json()["body"]) == expected(good)

    malformed = event("apigw-v1")
    malformed["body"] = '{"X": [1,'
    rest = api.invoke(malformed).json()
    assert rest["statusCode"] == 400 and json.loads(rest["body"])["code"] == "bad_request"

    batch = event("sqs")
    batch["Records"][1]["body"] = '{"X": "poison"}'
    assert api.invoke(batch).json() == {"batchItemFailures": [{"itemIdentifier": batch["Records"][1]["messageId"]}]}

    failing = api.invoke({"X": [[1.0, 2.0]]})
    assert failing.kind == "error"
    report = failing.json()
    assert report["errorType"] == "InvalidInput" and "axis 1 must be 30" in report["errorMessage"]
    cause = json.loads(failing.headers["lambda-runtime-function-xray-error-cause"])
    assert [e["type"] for e in cause["exceptions"]] == ["InvalidInput"]
    assert [frame["label"] for frame in cause["exceptions"][0]["stack"]] == ["handler"]  # no core internals

    assert api.invoke(event("direct")).json() == expected(event("direct"))  # still serving after an error
    alb = api.invoke(event("alb")).json()
    assert alb["statusDescription"] == "200 OK" and json.loads(alb["body"]) == expected(good)

    lines = function.logs()
    metrics = [line for line in lines if "_aws" in line]
    assert len(metrics) == 6
    assert [m["trigger"] for m in metrics] == ["apigw-http", "apigw-rest", "sqs", "direct", "direct", "alb"]
    assert "ModelLoadTime" in metrics[0] and all("ModelLoadTime" not in m for m in metrics[1:])
    loaded = next(line for line in lines if line.get("message") == "model loaded")
    assert loaded["model_function"] == "breast-cancer" and loaded["load_ms"] > 0
    failures = [line for line in lines if line.get("message") in ("request failed", "message failed")]
    assert [f["cold_start"] for f in failures] == [False, False]
    assert failures[0]["function_name"] == "modelfn-breast-cancer"
    assert failures[1]["message_id"] == batch["Records"][1]["messageId"]


def test_snapstart_hooks_load_before_the_snapshot_and_refresh_after_restore(start: Any) -> None:
    function = start(AWS_LAMBDA_INITIALIZATION_TYPE="snap-start")
    response = function.api.invoke(event("direct"))
    assert response.json() == expected(event("direct"))
    assert function.api.restores == 1
    messages = [line.get("message") for line in function.logs()]
    assert (
        messages.index("model loaded") < messages.index("ready for snapshot") < messages.index("restored from snapshot")
    )


def test_unknown_function_fails_the_init_with_what_exists(start: Any) -> None:
    function = start("no-such-function")
    assert function.process.wait(timeout=60) != 0
    report = json.loads(function.api.init_error.body) if function.api.init_error else {}
    assert report["errorType"] == "NotFound"
    assert "no-such-function" in report["errorMessage"] and "breast-cancer" in report["errorMessage"]


def test_s3_event_in_the_runtime_loop_reports_the_failed_key(start: Any, moto_endpoint: str) -> None:
    bucket = unique("modelfn-loop")
    s3 = boto("s3", moto_endpoint)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="incoming/good one.json", Body=json.dumps(event("direct")).encode())
    function = start(AWS_ENDPOINT_URL=moto_endpoint)
    notification = event("s3-put")
    notification["Records"][0]["s3"]["bucket"]["name"] = bucket
    notification["Records"][0]["s3"]["object"]["key"] = "incoming/good+one.json"
    missing = json.loads(json.dumps(notification["Records"][0]))
    missing["s3"]["object"]["key"] = "incoming/missing.json"
    notification["Records"].append(missing)

    outcome = function.api.invoke(notification)
    assert outcome.kind == "error" and outcome.json()["errorType"] == "ObjectsFailed"
    assert f"s3://{bucket}/incoming/missing.json" in outcome.json()["errorMessage"]
    written = s3.get_object(Bucket=bucket, Key="predictions/good one.json.json")["Body"].read()
    assert json.loads(written) == expected(event("direct"))  # the good object was not lost
    failed = [line for line in function.logs() if line.get("message") == "object failed"]
    assert [line["key"] for line in failed] == ["incoming/missing.json"]


def test_tracing_sends_a_subsegment_per_invocation_to_xray(start: Any) -> None:
    pytest.importorskip("aws_xray_sdk", reason="tracing needs aws-xray-sdk")
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.0.1", 0))
    daemon.settimeout(30)
    received: list[dict[str, Any]] = []

    def listen() -> None:
        try:
            while True:
                packet, _ = daemon.recvfrom(65536)
                received.append(json.loads(packet.decode().split("\n", 1)[1]))
        except (TimeoutError, OSError):
            pass

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    host, port = daemon.getsockname()
    function = start(
        MODELFN_TRACING="1",
        LAMBDA_TASK_ROOT=str(ROOT),
        AWS_XRAY_DAEMON_ADDRESS=f"{host}:{port}",
        AWS_XRAY_CONTEXT_MISSING="LOG_ERROR",
    )
    request_id = function.api.submit(event("apigw-v2"), sampled=True)
    assert function.api.outcome(request_id).json()["statusCode"] == 200
    # the segment arrives over UDP on the listener's thread: wait for it, not for any packet
    wait_until(lambda: any(segment.get("name") == "## apigw-http" for segment in list(received)))
    daemon.close()
    names = {segment["name"]: segment for segment in received}
    assert "## apigw-http" in names, received
    annotations = names["## apigw-http"]["annotations"]
    assert annotations["trigger"] == "apigw-http" and annotations["model_function"] == "breast-cancer"
