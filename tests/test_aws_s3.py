"""S3, SQS and SNS end to end against moto's server on loopback: the notifications moto
itself sends (S3 to SQS, S3 to EventBridge to SQS) are handed to the Lambda handler, which
reads and writes real objects and sends real messages over HTTP."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from support.aws import boto, unique, use_endpoint

from handlers.local import aws as local_aws
from handlers.local.aws import LocalContext

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events" / "aws"


def row(cancer_rows: Any, index: int) -> bytes:
    return json.dumps({"X": cancer_rows[index].tolist()}).encode()


class Bucket:
    """A fresh bucket whose ObjectCreated notifications moto delivers to a fresh queue."""

    def __init__(self, endpoint: str, eventbridge: bool = False) -> None:
        self.s3, self.sqs = boto("s3", endpoint), boto("sqs", endpoint)
        self.name = unique("modelfn-in")
        self.s3.create_bucket(Bucket=self.name)
        self.queue = self.sqs.create_queue(QueueName=unique("notifications"))["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        if eventbridge:
            events = boto("events", endpoint)
            rule = unique("s3-created")
            pattern = {
                "source": ["aws.s3"],
                "detail-type": ["Object Created"],
                "detail": {"bucket": {"name": [self.name]}},
            }
            events.put_rule(Name=rule, EventPattern=json.dumps(pattern))
            events.put_targets(Rule=rule, Targets=[{"Id": "queue", "Arn": arn}])
            config: dict[str, Any] = {"EventBridgeConfiguration": {}}
        else:
            config = {"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]}
        self.s3.put_bucket_notification_configuration(Bucket=self.name, NotificationConfiguration=config)

    def put(self, key: str, body: bytes, **extra: Any) -> None:
        self.s3.put_object(Bucket=self.name, Key=key, Body=body, **extra)

    def get(self, key: str) -> Any:
        return json.loads(self.s3.get_object(Bucket=self.name, Key=key)["Body"].read())

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.name, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def notifications(self) -> list[dict[str, Any]]:
        """The messages moto delivered (S3 notifications or EventBridge events), as SQS records."""
        received = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        return [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:notifications",
                "awsRegion": "us-east-1",
            }
            for m in received.get("Messages", [])
        ]

    def object_events(self) -> list[dict[str, Any]]:
        bodies = [json.loads(r["body"]) for r in self.notifications()]
        return [b for b in bodies if b.get("Event") != "s3:TestEvent"]


def test_s3_object_with_spaces_and_unicode_in_its_key(aws: Any, endpoint: str, cancer: Any, cancer_rows: Any) -> None:
    bucket = Bucket(endpoint)
    key = "incoming/patient ü 7 €+1.json"
    bucket.put(key, row(cancer_rows, 7))
    [notification] = bucket.object_events()
    assert notification["Records"][0]["s3"]["object"]["key"] == quote_plus(key)  # as S3 sends it: URL-encoded
    result = aws.handler(notification, LocalContext("modelfn-test"))
    output = "predictions/patient ü 7 €+1.json.json"
    assert result == {
        "processed": [{"source": f"s3://{bucket.name}/{key}", "output": f"s3://{bucket.name}/{output}"}],
        "skipped": [],
    }
    assert bucket.get(output) == cancer.predict(row(cancer_rows, 7))
    head = bucket.s3.head_object(Bucket=bucket.name, Key=output)
    assert head["ContentType"] == "application/json" and head["Metadata"] == {"modelfn-function": "breast-cancer"}


def test_s3_object_created_through_eventbridge(aws: Any, endpoint: str, cancer: Any, cancer_rows: Any) -> None:
    bucket = Bucket(endpoint, eventbridge=True)
    key = "incoming/a+b c.json"
    bucket.put(key, row(cancer_rows, 3))
    [detail_event] = bucket.object_events()
    assert detail_event["detail-type"] == "Object Created"
    assert aws.kind_of(detail_event).name == "s3-eventbridge"
    aws.handler(detail_event, None)
    assert bucket.get("predictions/a+b c.json.json") == cancer.predict(row(cancer_rows, 3))


def test_s3_notifications_delivered_through_sqs(aws: Any, endpoint: str, cancer: Any, cancer_rows: Any) -> None:
    bucket = Bucket(endpoint)
    bucket.put("incoming/one.json", row(cancer_rows, 1))
    bucket.put("incoming/two.json", row(cancer_rows, 2))
    records = bucket.notifications()
    assert any(json.loads(r["body"]).get("Event") == "s3:TestEvent" for r in records)  # answered, never retried
    assert aws.handler({"Records": records}, None) == {"batchItemFailures": []}
    assert bucket.get("predictions/one.json.json") == cancer.predict(row(cancer_rows, 1))
    assert bucket.get("predictions/two.json.json") == cancer.predict(row(cancer_rows, 2))


def test_one_bad_object_is_raised_after_the_others_are_written(
    aws: Any, endpoint: str, cancer_rows: Any, logs: Callable[[], list[Any]]
) -> None:
    from handlers.aws.s3 import ObjectsFailed

    bucket = Bucket(endpoint)
    bucket.put("incoming/first.json", row(cancer_rows, 0))
    bucket.put("incoming/broken.json", b'{"X": [1, 2, 3]}')
    bucket.put("incoming/last.json", row(cancer_rows, 2))
    records = [r for event in bucket.object_events() for r in event["Records"]]
    with pytest.raises(ObjectsFailed) as raised:
        aws.handler({"Records": records}, None)
    assert str(raised.value).startswith("1 of 3 object(s) failed: ")
    assert f"s3://{bucket.name}/incoming/broken.json" in str(raised.value) and "axis 1 must be 30" in str(raised.value)
    assert bucket.keys("predictions/") == ["predictions/first.json.json", "predictions/last.json.json"]
    failed = [line for line in logs() if line.get("message") == "object failed"]
    assert [(line["bucket"], line["key"]) for line in failed] == [(bucket.name, "incoming/broken.json")]
    metrics = [line for line in logs() if "_aws" in line][-1]
    assert metrics["Errors"] == 1 and metrics["BatchSize"] == 3


def test_results_never_trigger_another_prediction(aws: Any, endpoint: str, cancer_rows: Any) -> None:
    bucket = Bucket(endpoint)
    bucket.put("incoming/x.json", row(cancer_rows, 0))
    aws.handler(bucket.object_events()[0], None)
    [result_event] = bucket.object_events()  # moto notifies for the result object too
    assert result_event["Records"][0]["s3"]["object"]["key"].startswith("predictions")
    assert aws.handler(result_event, None) == {
        "processed": [],
        "skipped": [f"s3://{bucket.name}/predictions/x.json.json"],
    }
    # a result copied elsewhere is still recognised by its metadata
    bucket.s3.copy_object(
        Bucket=bucket.name,
        Key="incoming/copy.json",
        CopySource={"Bucket": bucket.name, "Key": "predictions/x.json.json"},
    )
    copied = [e for e in bucket.object_events() if "copy" in e["Records"][0]["s3"]["object"]["key"]]
    assert aws.handler(copied[0], None)["skipped"] == [f"s3://{bucket.name}/incoming/copy.json"]
    assert bucket.keys("predictions/") == ["predictions/x.json.json"]


def test_output_bucket_and_prefix_from_the_environment(
    aws: Any, endpoint: str, cancer_rows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = Bucket(endpoint)
    results = unique("modelfn-out")
    bucket.s3.create_bucket(Bucket=results)
    monkeypatch.setenv("MODELFN_OUTPUT_BUCKET", results)
    monkeypatch.setenv("MODELFN_OUTPUT_PREFIX", "scored/")
    bucket.put("incoming/deep/path/r.json", row(cancer_rows, 5))
    aws.handler(bucket.object_events()[0], None)
    listed = bucket.s3.list_objects_v2(Bucket=results)["Contents"]
    assert [o["Key"] for o in listed] == ["scored/deep/path/r.json.json"]


def test_image_object_is_read_by_its_extension(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    pytest.importorskip("PIL", reason="the image codec needs pillow")
    from PIL import Image
    from sklearn.datasets import load_digits

    from handlers import aws_lambda
    from handlers.aws import app

    use_endpoint(monkeypatch, endpoint)
    monkeypatch.setenv("MODELFN_FUNCTION", "digits")
    app.reset()
    digits = load_digits()
    pixels = (255 - digits.images[0] * 255 / 16).astype("uint8")  # dark ink on a light background
    png = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(png, format="PNG")
    bucket = Bucket(endpoint)
    bucket.put("incoming/zero.png", png.getvalue())  # no ContentType: stored as binary/octet-stream
    assert bucket.s3.head_object(Bucket=bucket.name, Key="incoming/zero.png")["ContentType"] == "binary/octet-stream"
    aws_lambda.handler(bucket.object_events()[0], None)
    result = bucket.get("predictions/zero.png.json")
    assert result["label"] == digits.target[0] == 0


def sqs_event(bodies: list[tuple[str, bytes]]) -> dict[str, Any]:
    template = json.loads((EVENTS / "sqs.json").read_text())["Records"][0]
    return {"Records": [{**template, "messageId": mid, "body": body.decode()} for mid, body in bodies]}


def test_sqs_results_go_to_the_output_queue(
    aws: Any, endpoint: str, cancer: Any, cancer_rows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqs = boto("sqs", endpoint)
    results = sqs.create_queue(QueueName=unique("results"))["QueueUrl"]
    monkeypatch.setenv("MODELFN_OUTPUT_QUEUE", results)
    batch = sqs_event([("m-1", row(cancer_rows, 1)), ("m-poison", b'{"X": []}'), ("m-2", row(cancer_rows, 2))])
    assert aws.handler(batch, None) == {"batchItemFailures": [{"itemIdentifier": "m-poison"}]}
    messages = sqs.receive_message(QueueUrl=results, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    sent = {json.loads(m["Body"])["source_id"]: json.loads(m["Body"]) for m in messages}
    assert set(sent) == {"m-1", "m-2"}
    assert sent["m-1"] == {
        "source_id": "m-1",
        "function": "breast-cancer",
        "result": cancer.predict(row(cancer_rows, 1)),
    }


def test_sqs_results_go_to_an_s3_prefix(
    aws: Any, endpoint: str, cancer: Any, cancer_rows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = boto("s3", endpoint)
    results = unique("modelfn-results")
    s3.create_bucket(Bucket=results)
    monkeypatch.setenv("MODELFN_OUTPUT_S3", f"s3://{results}/batch")
    assert aws.handler(sqs_event([("a/b:1", row(cancer_rows, 4))]), None) == {"batchItemFailures": []}
    written = s3.get_object(Bucket=results, Key="batch/a_b_1.json")["Body"].read()
    assert json.loads(written) == cancer.predict(row(cancer_rows, 4))


def test_sqs_destination_failure_marks_the_message_failed(
    aws: Any, cancer_rows: Any, monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    monkeypatch.setenv("MODELFN_OUTPUT_QUEUE", f"{endpoint}/123456789012/{unique('no-such-queue')}")
    result = aws.handler(sqs_event([("m-1", row(cancer_rows, 1))]), None)
    assert result == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}  # not delivered: SQS retries it


def test_sns_results_published_to_the_output_topic(
    aws: Any, endpoint: str, cancer: Any, cancer_rows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sns, sqs = boto("sns", endpoint), boto("sqs", endpoint)
    topic = sns.create_topic(Name=unique("results"))["TopicArn"]
    queue = sqs.create_queue(QueueName=unique("subscriber"))["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    monkeypatch.setenv("MODELFN_OUTPUT_TOPIC", topic)
    notification = json.loads((EVENTS / "sns.json").read_text())
    notification["Records"][0]["Sns"]["Message"] = row(cancer_rows, 9).decode()
    result = aws.handler(notification, None)
    assert result["processed"][0]["output"].startswith(topic)
    [message] = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"]
    assert json.loads(message["Body"])["result"] == cancer.predict(row(cancer_rows, 9))


def test_local_invoke_without_aws_uses_the_sample_bucket_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cancer: Any
) -> None:
    import shutil

    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "MODELFN_LOCAL_S3", "MODELFN_FUNCTION"):
        monkeypatch.setenv(name, "")  # recorded, so what local_invoke sets is undone after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws here
    shutil.copytree(EVENTS / "s3", tmp_path / "events" / "aws" / "s3")
    monkeypatch.chdir(tmp_path)
    result = local_aws.local_invoke("breast-cancer", json.loads((EVENTS / "s3-put.json").read_text()))
    assert result["processed"][0]["output"] == "s3://modelfn-examples/predictions/sample row.json.json"
    written = tmp_path / "events" / "aws" / "s3" / "modelfn-examples" / "predictions" / "sample row.json.json"
    source = tmp_path / "events" / "aws" / "s3" / "modelfn-examples" / "incoming" / "sample row.json"
    assert json.loads(written.read_text()) == cancer.predict(source.read_bytes())
