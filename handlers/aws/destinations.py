"""Where event results go when no caller waits for them: an SQS queue, an S3 prefix, an
SNS topic, or the log. Chosen by the spec's trigger table, or MODELFN_OUTPUT_QUEUE,
MODELFN_OUTPUT_S3 and MODELFN_OUTPUT_TOPIC."""

from __future__ import annotations

import os
import re
from typing import Any, Protocol

from handlers.aws.clients import client
from handlers.aws.objects import location, store
from handlers.aws.telemetry import Telemetry
from modelfn.events import OUTPUT_MARK, encode_result
from modelfn.http import json_text
from modelfn.spec import FunctionSpec

UNSAFE_KEY = re.compile(r"[^A-Za-z0-9._=-]")


class Destination(Protocol):
    def send(self, source_id: str, function: str, result: Any) -> str:
        """Deliver one result; returns where it went."""
        ...


class LogDestination:
    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def send(self, source_id: str, function: str, result: Any) -> str:
        self.telemetry.info("prediction", source_id=source_id, result=result)
        return "log"


class QueueDestination:
    """One message per result: `{"source_id", "function", "result"}`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def send(self, source_id: str, function: str, result: Any) -> str:
        body = json_text({"source_id": source_id, "function": function, "result": result})
        sent = client("sqs").send_message(QueueUrl=self.url, MessageBody=body)
        return f"{self.url}#{sent['MessageId']}"


class TopicDestination:
    def __init__(self, arn: str) -> None:
        self.arn = arn

    def send(self, source_id: str, function: str, result: Any) -> str:
        body = json_text({"source_id": source_id, "function": function, "result": result})
        sent = client("sns").publish(TopicArn=self.arn, Message=body)
        return f"{self.arn}#{sent['MessageId']}"


class PrefixDestination:
    """`s3://bucket/prefix/`: one object per result, named after the message that asked for it."""

    def __init__(self, uri: str) -> None:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"

    def send(self, source_id: str, function: str, result: Any) -> str:
        key = f"{self.prefix}{UNSAFE_KEY.sub('_', source_id)}.json"
        store().put(self.bucket, key, encode_result(result), "application/json", {OUTPUT_MARK: function})
        return location(self.bucket, key)


def for_queue_results(spec: FunctionSpec, telemetry: Telemetry) -> Destination:
    trigger = spec.triggers.sqs
    queue = os.environ.get("MODELFN_OUTPUT_QUEUE") or (trigger.output_queue if trigger else None)
    prefix = os.environ.get("MODELFN_OUTPUT_S3") or (trigger.output_s3 if trigger else None)
    if queue:
        return QueueDestination(queue)
    if prefix:
        return PrefixDestination(prefix)
    return LogDestination(telemetry)


def for_topic_results(spec: FunctionSpec, telemetry: Telemetry) -> Destination:
    trigger = spec.triggers.sns
    topic = os.environ.get("MODELFN_OUTPUT_TOPIC") or (trigger.output_topic if trigger else None)
    return TopicDestination(topic) if topic else LogDestination(telemetry)
