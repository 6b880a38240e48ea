"""The shadow version in an invocation of its own on Azure Functions: with MODELFN_SHADOW_QUEUE
set (and the spec naming a shadow), the live triggers put each sampled copy
(`modelfn.shadow_copy`: the request as it arrived and the live answer) on that Storage Queue,
and the app registers one more Queue trigger, `<name>_shadow`, on it: the host runs the shadow
there, in its own invocation, and the agreement goes to the `modelfn.versions` log lines.
MODELFN_SHADOW_CONNECTION names the app setting holding the storage connection string
(default AzureWebJobsStorage). Unset, the shadow runs in-process after the answer.

The live answer waits for the one `send_message` call. A copy over the queue's 64 KB message
limit (48 KB before base64), or a send that fails, is logged and counted as dropped; the
live answer never fails for it. A shadow copy that fails is logged, never retried."""

import logging
import os
from typing import TYPE_CHECKING, Any

import azure.functions as func  # at import: the worker reads the trigger's annotations

if TYPE_CHECKING:
    from handlers.az.served import ServedFunction
    from modelfn.shadow_copy import ShadowCopy

log = logging.getLogger("modelfn")

QUEUE_ENV = "MODELFN_SHADOW_QUEUE"
CONNECTION_ENV = "MODELFN_SHADOW_CONNECTION"
DEFAULT_CONNECTION = "AzureWebJobsStorage"
MESSAGE_LIMIT = 48 * 1024
"""A Storage Queue message holds 64 KB; the host's default base64 encoding leaves 48 KB."""


class QueueShadowSink:
    """Sends each shadow copy to the shadow queue; never raises into the live answer."""

    def __init__(self, queue: str, connection_setting: str) -> None:
        from azure.storage.queue import QueueClient, TextBase64EncodePolicy

        self.queue = queue
        connection = os.environ.get(connection_setting, "")
        # base64, as the host's queue trigger reads messages by default (host.json messageEncoding)
        # one attempt and short timeouts: a live answer never waits on the SDK's retries with backoff
        self.client = QueueClient.from_connection_string(
            connection,
            queue,
            message_encode_policy=TextBase64EncodePolicy(),
            retry_total=0,
            connection_timeout=1,
            read_timeout=2,
        )

    def __call__(self, copy: "ShadowCopy") -> None:
        try:
            data = copy.encoded()
            if len(data) > MESSAGE_LIMIT:
                raise ValueError(f"{len(data)} bytes, over the queue's {MESSAGE_LIMIT} byte message limit")
            self.client.send_message(data.decode())
        except Exception as exc:
            from modelfn.traffic import shadow_dropped

            log.warning("shadow copy not sent to queue %s: %s: %s", self.queue, type(exc).__name__, str(exc)[:300])
            shadow_dropped(copy.function, copy.version)


def add_shadow(app: func.FunctionApp | func.AsgiFunctionApp, served: "ServedFunction", function_id: str) -> None:
    """For a spec with a shadow version and MODELFN_SHADOW_QUEUE set: send copies there from the
    live triggers, and run them from a Queue trigger of their own."""
    queue = os.environ.get(QUEUE_ENV)
    if not queue or not served.spec.traffic.shadow:
        return
    connection = os.environ.get(CONNECTION_ENV) or DEFAULT_CONNECTION
    sink = QueueShadowSink(queue, connection)
    served.service.shadow_sink = served.objects.shadow_sink = sink

    @app.function_name(function_id)
    @app.queue_trigger(arg_name="msg", queue_name=queue, connection=connection)
    def shadow_trigger(msg: func.QueueMessage) -> None:
        run_message(served, msg)


def run_message(served: "ServedFunction", msg: Any) -> None:
    from modelfn.codecs import parse_json
    from modelfn.shadow_copy import ShadowCopy, run_copy

    try:
        copy = ShadowCopy.from_message(parse_json(msg.get_body()))
    except Exception as exc:  # not a copy this code can read: dropped, not poisoned
        log.warning("queue message %s on the shadow queue is not a shadow copy: %s", msg.id, exc)
        return
    run_copy(served.registry, copy)
