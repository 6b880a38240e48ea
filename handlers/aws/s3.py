"""S3 `ObjectCreated` triggers, as a direct bucket notification or through EventBridge:
read each object, predict, write the result JSON under the output prefix. One bad object
is logged, counted and, once every other object is done, raised so Lambda's retries and
dead-letter queue apply to the event."""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple
from urllib.parse import unquote_plus

from handlers.aws.app import LambdaApp
from handlers.aws.kind import EventKind, reason, records_from
from handlers.aws.objects import EXTENSION_TYPES, ObjectMissing, StoredObject, location, store
from modelfn.codecs import media_type
from modelfn.function import ModelFunction
from modelfn.http import MB
from modelfn.spec import S3Trigger

GENERIC_TYPES = {"", "binary/octet-stream", "application/octet-stream"}
OUTPUT_MARK = "modelfn-function"
"""User metadata on every result object: an object carrying it is never predicted again."""


class ObjectsFailed(Exception):
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

    def is_output(self, ref: ObjectRef) -> bool:
        same_bucket = self.output_bucket in (None, ref.bucket)
        return same_bucket and bool(self.output_prefix) and ref.key.startswith(self.output_prefix)

    def target(self, ref: ObjectRef) -> tuple[str, str]:
        """`incoming/a/b.png` -> `predictions/a/b.png.json`: predictable, and never two sources on one key."""
        relative = ref.key[len(self.prefix) :] if self.prefix and ref.key.startswith(self.prefix) else ref.key
        return self.output_bucket or ref.bucket, f"{self.output_prefix}{relative}.json"


def content_type(key: str, stored: str | None, fn: ModelFunction) -> str | None:
    """The stored Content-Type when it says something, else the key's extension: uploads
    without a type arrive as binary/octet-stream."""
    kind = media_type(stored)
    if kind not in GENERIC_TYPES:
        return stored
    dot = key.rfind(".")
    by_extension = EXTENSION_TYPES.get(key[dot:].lower()) if dot >= 0 else None
    if by_extension:
        return by_extension
    return stored if kind and kind in fn.codec.media_types else None


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
    fn = app.function()
    outputs = Outputs.for_spec(fn.spec.triggers.s3)
    limit = int(fn.spec.io.max_body_mb * MB)
    processed: list[dict[str, str]] = []
    skipped: list[str] = []
    failed: list[tuple[ObjectRef, str]] = []
    for ref in refs:
        if outputs.is_output(ref):
            telemetry.info("skipped: the object is under the output prefix", key=ref.key, bucket=ref.bucket)
            skipped.append(ref.uri)
            continue
        try:
            found = _read(ref, limit)
            if OUTPUT_MARK in found.metadata:
                telemetry.info("skipped: the object is a modelfn result", key=ref.key, bucket=ref.bucket)
                skipped.append(ref.uri)
                continue
            result = fn.predict(found.body, content_type(ref.key, found.content_type, fn))
            body = json.dumps(result, separators=(",", ":"), allow_nan=False).encode()
            bucket, key = outputs.target(ref)
            store().put(bucket, key, body, "application/json", {OUTPUT_MARK: fn.name})
        except Exception as exc:  # one object's failure must not lose the others
            telemetry.error("object failed", key=ref.key, bucket=ref.bucket, error=reason(exc))
            failed.append((ref, reason(exc)))
            continue
        processed.append({"source": ref.uri, "output": location(bucket, key)})
        telemetry.info("object predicted", key=ref.key, bucket=ref.bucket, output=location(bucket, key))
    telemetry.metric("Errors", len(failed))
    if failed:
        named = "; ".join(f"{ref.uri} ({why})" for ref, why in failed)
        raise ObjectsFailed(f"{len(failed)} of {len(refs)} object(s) failed: {named}")
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
