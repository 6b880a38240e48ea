"""Faults, with real parts on loopback: a model source that is unreachable, corrupt, pinned to
another digest or silent; SQS batches with several poisoned messages; S3 objects deleted
before they are read; results that cannot be written. In every case the failure is named
(status, log line with the key or message id, metric) and nothing is lost or answered wrongly."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from live_server import LiveServer
from support.aws import boto, capture_telemetry, unique

from handlers.local.aws import LocalContext
from modelfn.asgi import create_app
from modelfn.errors import IntegrityError, ModelUnavailable
from modelfn.registry import Registry
from modelfn.sources import cache_dir, resolve

ROOT = Path(__file__).resolve().parent.parent
CANCER = ROOT / "functions" / "breast-cancer"
MODEL_BYTES = (CANCER / "model.onnx").read_bytes()
DIGEST = hashlib.sha256(MODEL_BYTES).hexdigest()
EVENTS = ROOT / "events" / "aws"


def function_with_source(root: Path, name: str, source: str, sha256: str | None = None) -> Path:
    """breast-cancer's spec under another name, its model taken from `source`."""
    folder = root / name
    folder.mkdir(parents=True)
    if not source.startswith(("http://", "https://", "s3://")):
        (folder / source).write_bytes(MODEL_BYTES)
    pin = f'sha256 = "{sha256}"\n' if sha256 else ""
    (folder / "function.toml").write_text(f'name = "{name}"\n[model]\nsource = "{source}"\n{pin}')
    return folder


def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ModelHost(http.server.ThreadingHTTPServer):
    """Serves `/model.onnx` from `data` over loopback HTTP."""

    daemon_threads = True

    def __init__(self, data: bytes) -> None:
        self.data = data
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(host.data)))
                self.end_headers()
                self.wfile.write(host.data)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/model.onnx"


class SilentServer:
    """Accepts TCP connections and never answers: a model store that hangs."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.held: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.held.append(connection)
            self.accepted += 1

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def close(self) -> None:
        self.socket.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def bounded(call: Callable[[], object], limit_s: float = 60) -> BaseException | None:
    """Run `call` in a thread; the exception it ended with, or a failure if it is still running
    after `limit_s` (a hang check, far above the few seconds the fetch timeout allows)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert outcome, f"still waiting after {limit_s} s: the fetch timeout was not honoured"
    return outcome[0]


# Model sources at start: readiness says why, predictions get 503, never a wrong answer


def test_unreachable_and_corrupt_sources_leave_their_functions_not_ready_and_the_rest_serving(
    tmp_path: Path, cancer_rows: np.ndarray
) -> None:
    corrupt = ModelHost(MODEL_BYTES[: len(MODEL_BYTES) // 2])  # a model cut short
    try:
        function_with_source(tmp_path, "unreachable", f"http://127.0.0.1:{closed_port()}/model.onnx", DIGEST)
        # pinned to the truncated bytes themselves: fetched and verified, then refused by ONNX Runtime
        function_with_source(tmp_path, "corrupt", corrupt.url, hashlib.sha256(corrupt.data).hexdigest())
        function_with_source(tmp_path, "good", "model.onnx", DIGEST)
        with LiveServer(create_app(Registry.from_dir(tmp_path))) as live:
            ready = httpx.get(f"{live.url}/v2/health/ready")
            assert ready.status_code == 503
            failed = ready.json()["failed"]
            assert ready.json()["ready"] is False and set(failed) == {"unreachable", "corrupt"}
            assert "could not fetch model" in failed["unreachable"] and "Connection refused" in failed["unreachable"]
            assert "could not load" in failed["corrupt"]
            for name in ("unreachable", "corrupt"):
                assert httpx.get(f"{live.url}/v2/models/{name}/ready").json() == {"name": name, "ready": False}
                predict = httpx.post(f"{live.url}/functions/{name}", json={"X": cancer_rows[0].tolist()})
                assert predict.status_code == 503
                assert predict.json()["code"] == "model_unavailable" and name in predict.json()["error"]
                oip = {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": [0.0] * 30}]}
                assert httpx.post(f"{live.url}/v2/models/{name}/infer", json=oip).status_code == 503
                assert httpx.get(f"{live.url}/v2/models/{name}").status_code == 503
            # the healthy function beside them answers, and answers right
            offline = Registry.from_dir(ROOT / "functions", ["breast-cancer"]).load("breast-cancer")
            good = httpx.post(f"{live.url}/functions/good", json={"X": cancer_rows[:4].tolist()})
            assert good.status_code == 200
            assert good.json() == offline.predict(json.dumps({"X": cancer_rows[:4].tolist()}).encode())
    finally:
        corrupt.shutdown()


def test_sha256_mismatch_refuses_on_the_server(tmp_path: Path, cancer_rows: np.ndarray) -> None:
    function_with_source(tmp_path, "pinned", "model.onnx", "0" * 64)
    with LiveServer(create_app(Registry.from_dir(tmp_path))) as live:
        ready = httpx.get(f"{live.url}/v2/health/ready")
        assert ready.status_code == 503
        assert "does not match its sha256 pin" in ready.json()["failed"]["pinned"]
        predict = httpx.post(f"{live.url}/functions/pinned", json={"X": cancer_rows[0].tolist()})
        assert predict.status_code == 503 and "sha256" in predict.json()["error"]


def test_sha256_mismatch_of_a_download_refuses_and_caches_nothing(tmp_path: Path) -> None:
    tampered = ModelHost(MODEL_BYTES[:-1] + bytes([MODEL_BYTES[-1] ^ 1]))  # one bit flipped
    try:
        with pytest.raises(IntegrityError, match="does not match its sha256 pin"):
            resolve(tampered.url, tmp_path, DIGEST)
    finally:
        tampered.shutdown()
    assert [p.name for p in cache_dir().iterdir() if p.suffix == ".onnx"] == []


@pytest.fixture
def lambda_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str, str | None], Any]:
    """The Lambda handler serving one test function, whose model comes from `source`."""

    def serve(source: str, sha256: str | None = None) -> Any:
        from handlers import aws_lambda
        from handlers.aws import app

        function_with_source(tmp_path / "functions", "scored", source, sha256)
        monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(tmp_path / "functions"))
        monkeypatch.setenv("MODELFN_FUNCTION", "scored")
        app.reset()
        return aws_lambda

    return serve


def http_event(method: str, path: str, body: str = "", headers: dict[str, str] | None = None) -> dict[str, Any]:
    sample = json.loads((EVENTS / "apigw-v2.json").read_text())
    sample.update(rawPath=path, body=body, isBase64Encoded=False)
    sample["requestContext"]["http"].update(method=method, path=path)
    sample["headers"] = {"content-type": "application/json", **(headers or {})}
    return sample


def test_sha256_mismatch_refuses_on_lambda(
    lambda_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, cancer_rows: np.ndarray
) -> None:
    logs = capture_telemetry(monkeypatch)
    aws_lambda = lambda_app("model.onnx", "f" * 64)
    body = json.dumps({"X": cancer_rows[0].tolist()})
    response = aws_lambda.handler(http_event("POST", "/functions/scored", body), LocalContext("t"))
    assert response["statusCode"] == 503
    assert "does not match its sha256 pin" in json.loads(response["body"])["error"]
    ready = aws_lambda.handler(http_event("GET", "/v2/health/ready"), LocalContext("t"))
    assert ready["statusCode"] == 503 and "sha256" in json.loads(ready["body"])["failed"]["scored"]
    with pytest.raises(ModelUnavailable, match="sha256"):
        aws_lambda.handler({"X": cancer_rows[0].tolist()}, LocalContext("t"))
    # an SQS batch is not lost: the invocation fails as a whole, so SQS makes every message visible again
    with pytest.raises(ModelUnavailable, match="sha256"):
        aws_lambda.handler(json.loads((EVENTS / "sqs.json").read_text()), LocalContext("t"))
    load_failures = [line for line in logs() if line.get("message") == "model failed to load"]
    assert load_failures and "sha256" in load_failures[0]["error"]


# Sources that hang: the fetch timeout bounds them


def test_https_source_that_never_answers_times_out(silent: SilentServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFN_FETCH_TIMEOUT_S", "0.5")
    raised = bounded(lambda: resolve(f"{silent.endpoint}/model.onnx", Path("."), DIGEST))
    assert isinstance(raised, ModelUnavailable) and "timed out" in raised.message
    assert silent.accepted >= 1


def test_s3_source_that_never_answers_times_out(
    silent: SilentServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent.endpoint)
    monkeypatch.setenv("MODELFN_FETCH_TIMEOUT_S", "0.5")
    raised = bounded(lambda: resolve("s3://models/cancer/model.onnx", Path(".")))
    assert isinstance(raised, ModelUnavailable), repr(raised)
    assert "s3://models/cancer/model.onnx" in raised.message and "timeout" in raised.message.lower()
    assert silent.accepted >= 1


def test_lambda_whose_s3_model_hangs_answers_503_with_the_reason(
    silent: SilentServer, monkeypatch: pytest.MonkeyPatch, lambda_app: Callable[..., Any]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent.endpoint)
    monkeypatch.setenv("MODELFN_FETCH_TIMEOUT_S", "0.5")
    aws_lambda = lambda_app("s3://models/cancer/model.onnx")
    answers: list[Any] = []
    bounded(lambda: answers.append(aws_lambda.handler(http_event("GET", "/v2/health/ready"), None)))
    assert answers[0]["statusCode"] == 503
    assert "timeout" in json.loads(answers[0]["body"])["failed"]["scored"].lower()


# SQS and S3 triggers against moto


def as_lambda_records(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """Messages received from SQS, shaped as Lambda's event source mapping delivers them."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {
                    name: {"stringValue": a["StringValue"], "dataType": a["DataType"]}
                    for name, a in m.get("MessageAttributes", {}).items()
                },
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            }
            for m in messages
        ]
    }


class RequestQueue:
    """A real queue on moto: messages sent, received as Lambda would, successes deleted as
    Lambda does after a partial batch response; failures stay and come back."""

    def __init__(self, endpoint: str) -> None:
        self.sqs = boto("sqs", endpoint)
        self.url = self.sqs.create_queue(QueueName=unique("requests"))["QueueUrl"]
        self.arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]

    def send(self, body: str, content_type: str | None = None) -> str:
        attributes = {"content-type": {"DataType": "String", "StringValue": content_type}} if content_type else {}
        return str(
            self.sqs.send_message(QueueUrl=self.url, MessageBody=body, MessageAttributes=attributes)["MessageId"]
        )

    def receive(self, count: int) -> list[dict[str, Any]]:
        received: dict[str, dict[str, Any]] = {}
        for _ in range(5):
            batch = self.sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=min(10, count - len(received)),
                VisibilityTimeout=60,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            received.update((m["MessageId"], m) for m in batch)
            if len(received) >= count or (received and not batch):
                break
        return list(received.values())

    def settle(self, messages: list[dict[str, Any]], response: dict[str, Any]) -> None:
        """What Lambda does with a partial batch response: delete every message not listed. The
        listed ones stay; their visibility timeout is ended here rather than waited for."""
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        for m in messages:
            if m["MessageId"] in failed:
                self.sqs.change_message_visibility(
                    QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
                )
            else:
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"])


def row(cancer_rows: np.ndarray, index: int) -> str:
    return json.dumps({"X": cancer_rows[index].tolist()})


POISONS = {
    "malformed JSON": ('{"X": [1, 2', None),
    "wrong shape": ('{"X": [1, 2, 3]}', None),
    "string for a number": (json.dumps({"X": ["a"] * 30}), None),
    "NaN": (json.dumps({"X": [float("nan")] * 30}), None),
    "unknown input": (json.dumps({"Y": [0.0] * 30}), None),
    "empty object": ("{}", None),
    "unsupported content type": ("a,b,c", "text/csv"),
}


def test_sqs_batch_with_several_poisoned_messages_fails_exactly_those_and_delivers_the_rest(
    aws: Any, endpoint: str, cancer: Any, cancer_rows: np.ndarray, logs: Callable[[], list[Any]], monkeypatch: Any
) -> None:
    requests, results = RequestQueue(endpoint), boto("sqs", endpoint)
    output = results.create_queue(QueueName=unique("results"))["QueueUrl"]
    monkeypatch.setenv("MODELFN_OUTPUT_QUEUE", output)
    good, poisoned = {}, {}
    for index, (kind, (body, content_type)) in enumerate(POISONS.items()):
        good[requests.send(row(cancer_rows, index))] = index
        poisoned[requests.send(body, content_type)] = kind
    messages = requests.receive(len(good) + len(poisoned))
    assert len(messages) == 14

    response = aws.handler(as_lambda_records(messages, requests.arn), LocalContext("t"))
    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == sorted(poisoned)
    requests.settle(messages, response)

    delivered = results.receive_message(QueueUrl=output, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    delivered += results.receive_message(QueueUrl=output, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    by_source = {json.loads(m["Body"])["source_id"]: json.loads(m["Body"])["result"] for m in delivered}
    assert by_source == {mid: cancer.predict(row(cancer_rows, index).encode()) for mid, index in good.items()}
    failures = {line["message_id"]: line["error"] for line in logs() if line.get("message") == "message failed"}
    assert set(failures) == set(poisoned)
    assert "malformed JSON" in failures[next(m for m, k in poisoned.items() if k == "malformed JSON")]
    assert [line for line in logs() if "_aws" in line][-1]["Errors"] == len(poisoned)
    # not lost: exactly the poisoned messages come back for a retry
    assert sorted(m["MessageId"] for m in requests.receive(len(poisoned) + 1)) == sorted(poisoned)


class NotifyingBucket:
    """A bucket whose ObjectCreated notifications moto delivers to a queue."""

    def __init__(self, endpoint: str) -> None:
        self.s3, self.sqs = boto("s3", endpoint), boto("sqs", endpoint)
        self.name = unique("modelfn-in")
        self.s3.create_bucket(Bucket=self.name)
        self.queue = self.sqs.create_queue(QueueName=unique("created"))["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        config = {"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]}
        self.s3.put_bucket_notification_configuration(Bucket=self.name, NotificationConfiguration=config)

    def put(self, key: str, body: str) -> None:
        self.s3.put_object(Bucket=self.name, Key=key, Body=body.encode())

    def records(self, expected: int) -> list[dict[str, Any]]:
        """The S3 notification records moto sent, without the test event."""
        found: list[dict[str, Any]] = []
        for _ in range(10):
            got = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            found += [r for m in got.get("Messages", []) for r in json.loads(m["Body"]).get("Records", [])]
            if len(found) >= expected:
                break
        return found

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.name, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))


def test_s3_object_deleted_before_it_is_read_is_reported_and_the_others_are_written(
    aws: Any, endpoint: str, cancer: Any, cancer_rows: np.ndarray, logs: Callable[[], list[Any]]
) -> None:
    from handlers.aws.s3 import ObjectsFailed

    bucket = NotifyingBucket(endpoint)
    for index, name in enumerate(["first", "gone", "last"]):
        bucket.put(f"incoming/{name}.json", row(cancer_rows, index))
    records = bucket.records(3)
    bucket.s3.delete_object(Bucket=bucket.name, Key="incoming/gone.json")

    with pytest.raises(ObjectsFailed) as raised:
        aws.handler({"Records": records}, LocalContext("t"))
    assert str(raised.value).startswith("1 of 3 object(s) failed: ")
    assert f"s3://{bucket.name}/incoming/gone.json" in str(raised.value) and "does not exist" in str(raised.value)
    assert bucket.keys("predictions/") == ["predictions/first.json.json", "predictions/last.json.json"]
    written = json.loads(bucket.s3.get_object(Bucket=bucket.name, Key="predictions/last.json.json")["Body"].read())
    assert written == cancer.predict(row(cancer_rows, 2).encode())
    failed = [line for line in logs() if line.get("message") == "object failed"]
    assert [(line["bucket"], line["key"]) for line in failed] == [(bucket.name, "incoming/gone.json")]
    assert [line for line in logs() if "_aws" in line][-1]["Errors"] == 1


def test_s3_results_that_cannot_be_written_fail_the_event_naming_every_key(
    aws: Any, endpoint: str, cancer_rows: np.ndarray, logs: Callable[[], list[Any]], monkeypatch: Any
) -> None:
    from handlers.aws.s3 import ObjectsFailed

    monkeypatch.setenv("MODELFN_OUTPUT_BUCKET", unique("no-such-bucket"))
    bucket = NotifyingBucket(endpoint)
    bucket.put("incoming/a.json", row(cancer_rows, 0))
    bucket.put("incoming/b.json", row(cancer_rows, 1))
    with pytest.raises(ObjectsFailed) as raised:
        aws.handler({"Records": bucket.records(2)}, LocalContext("t"))
    message = str(raised.value)
    assert message.startswith("2 of 2 object(s) failed: ") and message.count("The specified bucket does not exist") == 2
    assert f"s3://{bucket.name}/incoming/a.json" in message and f"s3://{bucket.name}/incoming/b.json" in message
    failed = sorted(line["key"] for line in logs() if line.get("message") == "object failed")
    assert failed == ["incoming/a.json", "incoming/b.json"]
    assert bucket.keys() == ["incoming/a.json", "incoming/b.json"]  # the inputs are still there for the retry


def test_sqs_results_that_cannot_be_written_to_s3_leave_the_messages_on_the_queue(
    aws: Any, endpoint: str, cancer_rows: np.ndarray, logs: Callable[[], list[Any]], monkeypatch: Any
) -> None:
    monkeypatch.setenv("MODELFN_OUTPUT_S3", f"s3://{unique('no-such-bucket')}/results/")
    requests = RequestQueue(endpoint)
    sent = sorted(requests.send(row(cancer_rows, i)) for i in range(3))
    messages = requests.receive(3)
    response = aws.handler(as_lambda_records(messages, requests.arn), LocalContext("t"))
    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == sent
    requests.settle(messages, response)
    failures = [line for line in logs() if line.get("message") == "message failed"]
    assert sorted(line["message_id"] for line in failures) == sent
    assert all("NoSuchBucket" in line["error"] for line in failures)
    assert sorted(m["MessageId"] for m in requests.receive(4)) == sent
