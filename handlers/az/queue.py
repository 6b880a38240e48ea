"""The Queue trigger: predict each message and send the result to the output queue. A
message that cannot be predicted raises: the host makes it visible again and, after
`maxDequeueCount` attempts, moves it to `<queue>-poison`, so nothing is dropped silently."""

import logging
from typing import Any

import azure.functions as func

from handlers.az.served import ServedFunction
from modelfn import events
from modelfn.errors import ModelfnError
from modelfn.http import json_text
from modelfn.spec import QueueTrigger

log = logging.getLogger("modelfn")


def predict_message(served: ServedFunction, msg: func.QueueMessage, queue: str) -> dict[str, Any]:
    try:
        result = served.objects.predict(served.name, msg.get_body(), "application/json")
    except ModelfnError as exc:
        kind = "failed on the server side" if events.retryable(exc) else "is malformed"
        log.error(
            "queue message %s on %s %s (%s, attempt %s): %s; the host retries it up to host.json "
            "extensions.queues.maxDequeueCount times (default 5), then moves it to %s-poison",
            msg.id,
            queue,
            kind,
            exc.code,
            msg.dequeue_count,
            exc.message,
            queue,
        )
        raise
    return {"function": served.name, "id": msg.id, "result": result}


def register(app: func.FunctionApp, served: ServedFunction, trigger: QueueTrigger, function_id: str) -> None:
    @app.function_name(function_id)
    @app.queue_trigger(arg_name="msg", queue_name=trigger.queue, connection=trigger.connection)
    @app.queue_output(arg_name="result", queue_name=trigger.output_queue, connection=trigger.connection)
    def queue_trigger(msg: func.QueueMessage, result: func.Out[str]) -> None:
        result.set(json_text(predict_message(served, msg, trigger.queue)))
