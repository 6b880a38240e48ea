"""Message triggers: SNS notifications, EventBridge events with a custom `detail`, and
direct invocation with a plain JSON payload (`aws lambda invoke`, Step Functions). Also
the one place that opens envelopes: an S3 notification or an SNS envelope arriving inside
an SQS or SNS message is served as what it carries."""

from __future__ import annotations

import functools
import json
from typing import Any

from handlers.aws import destinations
from handlers.aws.app import LambdaApp
from handlers.aws.kind import EventKind, records_from
from handlers.aws.s3 import notification_refs, predict_objects
from modelfn import events
from modelfn.traffic import KEY_ATTRIBUTE


class MessagesFailed(events.BatchFailed):
    """Some messages of an event could not be predicted; the others were."""


def _attribute(attributes: dict[str, Any] | None, *names: str) -> str | None:
    """A message attribute's string value; SQS spells it stringValue, SNS Value."""
    for name in names:
        found = (attributes or {}).get(name)
        if isinstance(found, dict):
            return found.get("stringValue") or found.get("Value")
    return None


def content_type_of(attributes: dict[str, Any] | None) -> str:
    return _attribute(attributes, "content-type", "Content-Type", "ContentType") or "application/json"


def version_key_of(attributes: dict[str, Any] | None) -> str | None:
    """The sticky version key a message carries (attribute `modelfn-key`), if any."""
    return _attribute(attributes, KEY_ATTRIBUTE)


def predict_message(app: LambdaApp, body: str, content_type: str, key: str | None = None) -> tuple[str, Any]:
    """("objects", summary) when the message is an S3 notification, else ("prediction", result)."""
    text = body.strip()
    if text.startswith("{") and ("aws:s3" in text or "TopicArn" in text or "s3:TestEvent" in text):
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if isinstance(document, dict):
            if document.get("Type") == "Notification" and isinstance(document.get("Message"), str):
                return predict_message(app, document["Message"], content_type, key)
            if records_from(document, "eventSource", "aws:s3") is not None:
                return "objects", predict_objects(app, notification_refs(document["Records"]))
            if document.get("Event") == "s3:TestEvent":  # sent once when a bucket notification is set up
                return "objects", {"processed": [], "skipped": []}
    return "prediction", app.predict(body.encode("utf-8"), content_type, key=key)


def is_open_inference_request(payload: Any) -> bool:
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    return isinstance(inputs, list) and all(isinstance(i, dict) and "datatype" in i for i in inputs)


class SnsNotification(EventKind):
    """SNS delivers one message per event; results go to the output topic or the log."""

    name = "sns"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        return records_from(event, "EventSource", "aws:sns") is not None

    def serve(self, event: Any, context: Any) -> dict[str, Any]:
        telemetry = self.app.telemetry
        records = event["Records"]
        telemetry.metric("BatchSize", len(records))
        destination = destinations.for_topic_results(self.app.spec(), telemetry)
        results: list[dict[str, str]] = []
        batch = events.Batch("message", len(records), MessagesFailed)

        def failed(message_id: str, error: str) -> None:
            telemetry.error("message failed", message_id=message_id, error=error)

        def deliver(message: dict[str, Any]) -> None:
            message_id = message.get("MessageId", "")
            attributes = message.get("MessageAttributes")
            kind, result = predict_message(
                self.app, message["Message"], content_type_of(attributes), version_key_of(attributes)
            )
            sent = destination.send(message_id, self.app.spec().name, result) if kind == "prediction" else "s3"
            results.append({"message_id": message_id, "output": sent})

        for record in records:
            message = record["Sns"]
            batch.run(message.get("MessageId", ""), functools.partial(deliver, message), failed)
        telemetry.metric("Errors", len(batch.failed))
        batch.raise_if_failed()  # SNS retries the event; every message is named
        return {"processed": results}


class EventBridgeDetail(EventKind):
    """A custom EventBridge event: its `detail` is the payload, the prediction is returned and logged."""

    name = "eventbridge"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        return isinstance(event, dict) and "detail-type" in event and "source" in event and "detail" in event

    def serve(self, event: Any, context: Any) -> Any:
        result = self.app.predict(payload=event["detail"])
        self.app.telemetry.info("prediction", source_id=event.get("id"), result=result)
        return result


class DirectInvoke(EventKind):
    """Anything else is the function's own payload, as `aws lambda invoke --payload` sends it;
    an Open Inference Protocol request gets an Open Inference Protocol response."""

    name = "direct"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        return True

    def serve(self, event: Any, context: Any) -> Any:
        if is_open_inference_request(event):
            return self.app.service.infer(self.app.spec().name, event)
        return self.app.predict(payload=event)
