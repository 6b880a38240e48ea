"""A batch of objects from a Step Functions Distributed Map (the `bulk` state machine of
`cdk/modelfn_cdk/bulk.py`): `{"Items": [{"Key", "Size", "Etag", "LastModified"}, ...],
"BatchInput": {"bucket", "prefix", "output"}}`, the items listed by the map's S3 reader and the
rest passed by its item batcher. Each object is scored by the same code as `modelfn batch`
(merged runs, one output per input in the input's layout, an error field per failed row), and
an object whose output already exists is skipped, so a redriven map run redoes only what is
missing.

Failures and the map's tolerated failure percentage: a failed row is an answer (it is in the
output and counted in the summary), so its object succeeded. An object that could not be read,
parsed or written fails: the others of the batch are still scored, then `BatchItemsFailed`
names the failed ones, and Step Functions counts the whole batch (every item in it) as failed
against `tolerated_failure_percentage`."""

from __future__ import annotations

from typing import Any

from handlers.aws.kind import EventKind
from modelfn import events


class BatchItemsFailed(events.BatchFailed):
    """Some objects of a Distributed Map batch got no output; the others were written."""


class DistributedMapBatch(EventKind):
    """A child execution's input under an ItemBatcher whose BatchInput names the prefix and the output."""

    name = "distributed-map"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        if not isinstance(event, dict) or not isinstance(event.get("Items"), list):
            return False
        given = event.get("BatchInput")
        return isinstance(given, dict) and all(isinstance(given.get(k), str) for k in ("bucket", "prefix", "output"))

    def serve(self, event: Any, context: Any) -> dict[str, Any]:
        from handlers.aws import clients
        from modelfn.batch import job  # the shared bulk code, loaded by this path only
        from modelfn.batch.scoring import Scorer
        from modelfn.batch.stores import Entry, S3Store, open_store

        given = event["BatchInput"]
        bucket, prefix = given["bucket"], given["prefix"]
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        telemetry = self.app.telemetry
        items = event["Items"]
        telemetry.metric("BatchSize", len(items))
        entries, outside = [], []
        for item in items:
            key = str(item.get("Key", "")) if isinstance(item, dict) else ""
            if not key.startswith(prefix) or key == prefix:
                outside.append(key)
                continue
            entries.append(Entry(key[len(prefix) :], int(item.get("Size") or 0)))
        s3 = clients.client("s3")  # the process's own, not two new ones per invocation
        source, target = S3Store(bucket, prefix, s3), open_store(given["output"], s3_client=s3)
        report = job.run(Scorer(self.app.function()), source, target, progress=False, entries=entries)
        failed = [(f"s3://{bucket}/{prefix}{name}", why) for name, why in report.failed_files]
        failed += [(f"s3://{bucket}/{key}", f"not below the prefix {prefix!r}") for key in outside]
        summary = {
            "input": source.uri,
            "output": target.uri,
            "items": [
                {
                    "key": prefix + w.input,
                    "output": target.uri + w.output,
                    "rows": w.rows,
                    "failed_rows": w.failed_rows,
                }
                for w in report.written
            ],
            "skipped": [prefix + name for name in report.skipped],  # their output is complete
            "ignored": [prefix + name for name in report.ignored],  # not a format `modelfn batch` reads
            "failed": [{"object": where, "error": why} for where, why in failed],
            "rows": report.rows,
            "failed_rows": report.failed_rows,
        }
        telemetry.metric("Errors", len(failed))
        telemetry.metric("Rows", report.rows)
        telemetry.metric("FailedRows", report.failed_rows)
        telemetry.info(
            "batch scored",
            objects=len(report.written),
            skipped=len(report.skipped),
            failed=len(failed),
            rows=report.rows,
            failed_rows=report.failed_rows,
        )
        if failed:
            batch = events.Batch("object", len(items), BatchItemsFailed)
            batch.failed = failed
            batch.raise_if_failed()
        return summary
