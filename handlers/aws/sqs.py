"""SQS batches, through Powertools' batch processing: every record is predicted and its
result sent on; the response's `batchItemFailures` lists exactly the records that failed,
so SQS retries only those. FIFO queues stop at the first failure to keep their order."""

from __future__ import annotations

from typing import Any

from handlers.aws import destinations
from handlers.aws.kind import EventKind, records_from
from handlers.aws.messages import content_type_of, predict_message, version_key_of
from modelfn.events import reason


class SqsBatch(EventKind):
    name = "sqs"

    @classmethod
    def recognise(cls, event: Any) -> bool:
        return records_from(event, "eventSource", "aws:sqs") is not None

    def serve(self, event: Any, context: Any) -> dict[str, Any]:
        # Powertools' batch utility costs ~0.15 s to import: only SQS events pay for it
        from aws_lambda_powertools.utilities.batch import (
            BatchProcessor,
            EventType,
            SqsFifoPartialProcessor,
            process_partial_response,
        )

        telemetry = self.app.telemetry
        records = event["Records"]
        telemetry.metric("BatchSize", len(records))
        # a model that cannot load fails the invocation as a whole: SQS makes every message visible again
        spec = self.app.function().spec
        destination = destinations.for_queue_results(spec, telemetry)

        def predict_record(record: Any) -> None:
            try:
                attributes = record.raw_event.get("messageAttributes")
                kind, result = predict_message(
                    self.app, record.body, content_type_of(attributes), version_key_of(attributes)
                )
                if kind == "prediction":
                    destination.send(record.message_id, spec.name, result)
            except Exception as exc:
                telemetry.error("message failed", message_id=record.message_id, error=reason(exc))
                raise

        fifo = str(records[0].get("eventSourceARN", "")).endswith(".fifo")
        processor = SqsFifoPartialProcessor() if fifo else BatchProcessor(EventType.SQS)
        # an all-failed batch is reported like any other rather than raised: the response names every record
        processor.raise_on_entire_batch_failure = False
        response = process_partial_response(
            event=event, record_handler=predict_record, processor=processor, context=context
        )
        telemetry.metric("Errors", len(response.get("batchItemFailures", [])))
        return dict(response)
