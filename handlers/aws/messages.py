"""Message triggers: SNS notifications, EventBridge events with a custom `detail`, and
direct invocation with a plain JSON payload (`aws lambda invoke`, Step Functions). Also
the one place that opens envelopes: an S3 notification or an SNS envelope arriving inside
an SQS or SNS message is served as what it carries."""

from __future__ import annotations

import json
from typing import Any

from handlers.aws import destinations
from handlers.aws.app import LambdaApp
from handlers.aws.kind import EventKind, reason, records_from
from handlers.aws.s3 import notification_refs, predict_objects


class MessagesFailed(Exception):
    """Some messages of an event could not be predicted."""


def _attribute(attributes: dict[str, Any] | None, *names: str) -> str | None:
    """A message attribute's string value; SQS spells it stringValue, SNS Value."""
    for name in names:
        found = (attributes or {}).get(name)
        if isinstance(found, dict):
            return found.get("stringValue") or found.get("Value")
    return None


def content_type_of(attributes: dict[str, Any] | None) -> str:
    return _attribute(attributes, "content-type", "Content-Type", "ContentType") or "application/json"


def predict_message(app: LambdaApp, body: str, content_type: str) -> tuple[str, Any]:
    """("objects", summary) when the message is an S3 notification, else ("prediction", result)."""
    text = body.strip()
    if text.startswith("{") and ("aws:s3" in text or "TopicArn" in text or "s3:TestEvent" in text):
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if isinstance(document, dict):
            if document.get("Type") == "Notification" and isinstance(document.get("Message"), str):
                return predict_message(app, document["Message"], content_type)
            if records_from(document, "eventSource", "aws:s3") is not None:
                return "objects", predict_objects(app, notification_refs(document["Records"]))
            if document.get("Event") == "s3:TestEvent":  # sent once when a bucket notification is set up
                return "objects", {"processed": [], "skipped": []}
    return "prediction", app.function().predict(body.encode("utf-8"), content_type)


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
        results, failed = [], []
        for record in records:
            message = record["Sns"]
            message_id = message.get("MessageId", "")
            try:
                kind, result = predict_message(
                    self.app, message["Message"], content_type_of(message.get("MessageAttributes"))
                )
                sent = destination.send(message_id, self.app.spec().name, result) if kind == "prediction" else "s3"
            except Exception as exc:  # report every message, then fail the event so SNS retries
                telemetry.error("message failed", message_id=message_id, error=reason(exc))
                failed.append(f"{message_id} ({reason(exc)})")
                continue
            results.append({"message_id": message_id, "output": sent})
        telemetry.metric("Errors", len(failed))
        if failed:
            raise MessagesFailed(f"{len(failed)} of {len(records)} message(s) failed: {'; '.join(failed)}")
        return {"processed": results}


class EventBridgeDetail(EventKind):
    """A custom EventBridge event: its `detail` is the payload, the prediction is returned and logged."""

    name = "eventbridge"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        return isinstance(event, dict) and "detail-type" in event and "source" in event and "detail" in event

    def serve(self, event: Any, context: Any) -> Any:
        result = self.app.function().predict(payload=event["detail"])
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
        fn = self.app.function()
        if is_open_inference_request(event):
            return fn.infer_v2(event)
        return fn.predict(payload=event)
