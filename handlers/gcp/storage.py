"""Cloud Storage: an `object.v1.finalized` CloudEvent. Read the object, predict, write the
result under `triggers.gcs.output_prefix`; results, objects outside the input prefix and
folder placeholders are skipped (Eventarc filters by bucket only). Rules: `modelfn.events`."""

from __future__ import annotations

import logging
from typing import Any

from handlers.gcp import instance
from handlers.gcp.settle import Outcome, retry, settle
from modelfn import events
from modelfn.errors import BadRequest
from modelfn.spec import GcsTrigger

log = logging.getLogger("modelfn.gcp")


def output_name(name: str, trigger: GcsTrigger) -> str:
    """`incoming/a/b.json` -> `predictions/a/b.json.json`: the path below the prefix is kept."""
    return events.result_name(name, trigger.prefix, trigger.output_prefix)


def skip_reason(bucket: str, key: str, trigger: GcsTrigger, metadata: dict[str, str] | None = None) -> str | None:
    if trigger.bucket and bucket != trigger.bucket:
        return f"bucket is not {trigger.bucket!r}"
    return events.skip_reason(key, prefix=trigger.prefix, output_prefix=trigger.output_prefix, metadata=metadata)


def handle_object(data: Any, function: str | None = None) -> Outcome:
    """One finalized object."""
    name = function
    where = f"gs://{data.get('bucket')}/{data.get('name')}" if isinstance(data, dict) else "?"
    try:
        if not isinstance(data, dict) or not data.get("bucket") or not data.get("name"):
            raise BadRequest("a Cloud Storage event needs data.bucket and data.name")
        bucket, key = str(data["bucket"]), str(data["name"])
        name = instance.target_function(function)
        trigger = instance.spec(name).triggers.gcs or GcsTrigger()
        skip = skip_reason(bucket, key, trigger, data.get("metadata"))
        if skip:
            log.info("skipped %s: %s", where, skip)
            return {"outcome": "skipped", "function": name, "object": where, "reason": skip}
        service = instance.service()
        service.function(name)  # a model that cannot load is retried before the object is read
        body = instance.storage().bucket(bucket).blob(key).download_as_bytes()
        result = service.predict(name, body, events.content_type(key, data.get("contentType"), body), key=key)
    except Exception as exc:
        return settle(exc, f"object {where}", name)

    out = output_name(key, trigger)
    try:
        blob = instance.storage().bucket(bucket).blob(out)
        blob.metadata = {events.OUTPUT_MARK: name}
        blob.upload_from_string(events.encode_result(result), content_type="application/json")
    except Exception as exc:
        raise retry(f"object {where}: writing gs://{bucket}/{out}", exc) from exc
    log.info("wrote gs://%s/%s for %s", bucket, out, where)
    return {"outcome": "written", "function": name, "object": where, "output": f"gs://{bucket}/{out}"}


class StorageObjectFinalized:
    """A `google.cloud.storage.object.v1.finalized` CloudEvent."""

    type = "google.cloud.storage.object.v1.finalized"

    @classmethod
    def serve(cls, source: str | None, data: Any, function: str | None) -> Outcome:
        return handle_object(data, function)
