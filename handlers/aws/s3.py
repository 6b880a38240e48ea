"""S3 `ObjectCreated` triggers, as a direct bucket notification or through EventBridge:
read each object, predict, write the result JSON under the output prefix. The rules (content
type, result name, which objects are results, failure collection) are `modelfn.events`:
one bad object is logged, counted and, once every other object is done, raised so
Lambda's retries and dead-letter queue apply to the event."""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple
from urllib.parse import unquote_plus

from handlers.aws.app import LambdaApp
from handlers.aws.kind import EventKind, records_from
from handlers.aws.objects import ObjectMissing, StoredObject, location, store
from modelfn import events
from modelfn.events import OUTPUT_MARK
from modelfn.spec import S3Trigger


class ObjectsFailed(events.BatchFailed):
    """Some objects of an S3 event could not be predicted; the others were written."""


class ObjectRef(NamedTuple):
    bucket: str
    key: str
    alternate_key: str
    """The other spelling of the key, tried when `key` does not exist: URL-encoded or not."""

    @property
    def uri(self) -> str:
        return location(self.bucket, self.key)


class Outputs(NamedTuple):
    """Where results go: `triggers.s3` of the spec, or MODELFN_OUTPUT_PREFIX / MODELFN_OUTPUT_BUCKET."""

    prefix: str
    output_prefix: str
    output_bucket: str | None

    @classmethod
    def for_spec(cls, trigger: S3Trigger | None) -> Outputs:
        trigger = trigger or S3Trigger()
        return cls(
            prefix=trigger.prefix,
            output_prefix=os.environ.get("MODELFN_OUTPUT_PREFIX", trigger.output_prefix),
            output_bucket=os.environ.get("MODELFN_OUTPUT_BUCKET") or trigger.output_bucket,
        )

    def skip_reason(self, ref: ObjectRef, metadata: dict[str, str] | None = None) -> str | None:
        """The notification filter already applied the input prefix: only results are skipped here."""
        same_place = self.output_bucket in (None, ref.bucket)
        return events.skip_reason(ref.key, output_prefix=self.output_prefix, metadata=metadata, same_place=same_place)

    def target(self, ref: ObjectRef) -> tuple[str, str]:
        return self.output_bucket or ref.bucket, events.result_name(ref.key, self.prefix, self.output_prefix)


def _read(ref: ObjectRef, limit: int) -> StoredObject:
    objects = store()
    try:
        return objects.get(ref.bucket, ref.key, limit)
    except ObjectMissing:
        if ref.alternate_key == ref.key:
            raise
        return objects.get(ref.bucket, ref.alternate_key, limit)


def predict_objects(app: LambdaApp, refs: list[ObjectRef]) -> dict[str, Any]:
    """Predict every object; raise `ObjectsFailed` naming the failures only after all are done."""
    telemetry = app.telemetry
    telemetry.metric("BatchSize", len(refs))
    spec = app.spec()
    outputs = Outputs.for_spec(spec.triggers.s3)
    limit = app.service.limit(spec.name)
    processed: list[dict[str, str]] = []
    skipped: list[str] = []
    batch = events.Batch("object", len(refs), ObjectsFailed)

    def skip(ref: ObjectRef, why: str) -> None:
        telemetry.info(f"skipped: {why}", key=ref.key, bucket=ref.bucket)
        skipped.append(ref.uri)

    def failed(ref: ObjectRef, item: str, error: str) -> None:
        telemetry.error("object failed", key=ref.key, bucket=ref.bucket, error=error)

    def predict(ref: ObjectRef) -> None:
        found = _read(ref, limit)
        why = outputs.skip_reason(ref, found.metadata)
        if why:
            return skip(ref, why)
        result = app.predict(found.body, events.content_type(ref.key, found.content_type, found.body), key=ref.key)
        bucket, key = outputs.target(ref)
        store().put(bucket, key, events.encode_result(result), "application/json", {OUTPUT_MARK: spec.name})
        processed.append({"source": ref.uri, "output": location(bucket, key)})
        telemetry.info("object predicted", key=ref.key, bucket=ref.bucket, output=location(bucket, key))
        return None

    for ref in refs:
        why = outputs.skip_reason(ref)
        if why:
            skip(ref, why)
            continue
        batch.run(ref.uri, functools.partial(predict, ref), functools.partial(failed, ref))
    telemetry.metric("Errors", len(batch.failed))
    batch.raise_if_failed()
    return {"processed": processed, "skipped": skipped}


def notification_refs(records: list[dict[str, Any]]) -> list[ObjectRef]:
    refs = []
    for record in records:
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        sent = record["s3"]["object"]["key"]
        # notification keys are URL-encoded, '+' standing for a space
        refs.append(ObjectRef(record["s3"]["bucket"]["name"], unquote_plus(sent), sent))
    return refs


class S3Notification(EventKind):
    """A bucket notification: `Records` from `aws:s3`."""

    name = "s3"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        return records_from(event, "eventSource", "aws:s3") is not None

    def serve(self, event: Any, context: Any) -> dict[str, Any]:
        return predict_objects(self.app, notification_refs(event["Records"]))


class S3EventBridge(EventKind):
    """An S3 `Object Created` event routed through EventBridge."""

    name = "s3-eventbridge"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        return (
            isinstance(event, dict) and event.get("source") == "aws.s3" and event.get("detail-type") == "Object Created"
        )

    def serve(self, event: Any, context: Any) -> dict[str, Any]:
        detail = event["detail"]
        sent = detail["object"]["key"]
        # EventBridge events have been seen with the key as stored and URL-encoded: try both, as stored first
        return predict_objects(self.app, [ObjectRef(detail["bucket"]["name"], sent, unquote_plus(sent))])


class S3TestEvent(EventKind):
    """S3 sends `s3:TestEvent` once when a notification is configured: nothing to predict."""

    name = "s3-test"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        return isinstance(event, dict) and event.get("Event") == "s3:TestEvent"

    def serve(self, event: Any, context: Any) -> dict[str, Any]:
        self.app.telemetry.info("S3 test event received", bucket=event.get("Bucket"))
        return {"processed": [], "skipped": []}
