"""The Blob trigger: predict each new blob under the trigger path and write the result
through the output binding. Retrying cannot change a blob's content, so a blob the model
refuses gets an error document; a failure another try may mend raises so the host retries
(`modelfn.events.retryable`)."""

import logging
import os
import re
from typing import Any

import azure.functions as func

from handlers.az.served import ServedFunction
from modelfn import events
from modelfn.errors import NotFound, error_body
from modelfn.http import json_text
from modelfn.spec import BlobTrigger

log = logging.getLogger("modelfn")


def predict_blob(served: ServedFunction, blob: func.InputStream) -> dict[str, Any]:
    """The document written for one blob: the prediction, or why it cannot be predicted."""
    data = blob.read()
    where = {"function": served.name, "blob": blob.name}
    try:
        result = served.objects.predict(served.name, data, events.content_type(blob.name, None, data), key=blob.name)
    except Exception as exc:
        if events.retryable(exc):
            raise
        status, body = error_body(exc)
        log.warning(
            "blob %s cannot be predicted (%s): %s; wrote an error document", blob.name, status, events.reason(exc)
        )
        return {**where, "status": status, **body}
    return {**where, "result": result}


def _binding_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"\{([^{}]+)\}", pattern)
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+)" for i, p in enumerate(parts)))


def blob_bindings(path: str, blob_name: str) -> dict[str, str]:
    """The binding data the host extracts from a blob path, e.g. `incoming/{name}` and
    `incoming/a.json` give `{"name": "a.json"}`."""
    match = _binding_regex(path).fullmatch(blob_name)
    if match is None:
        raise NotFound(f"blob {blob_name!r} does not match the trigger path {path!r}")
    return match.groupdict()


def output_blob_path(trigger: BlobTrigger, blob_name: str) -> str:
    """Where the host's output binding writes the result of `blob_name`."""
    values = blob_bindings(trigger.path, blob_name)
    return re.sub(r"\{([^{}]+)\}", lambda m: values.get(m.group(1), m.group(0)), trigger.output_path)


def blob_source() -> Any:
    """`MODELFN_AZURE_BLOB_SOURCE=EventGrid` for plans without the polling blob trigger (Flex Consumption)."""
    wanted = os.environ.get("MODELFN_AZURE_BLOB_SOURCE", "").lower()
    return func.BlobSource.EVENT_GRID if wanted == "eventgrid" else None


def register(app: func.FunctionApp, served: ServedFunction, trigger: BlobTrigger, function_id: str) -> None:
    @app.function_name(function_id)
    @app.blob_trigger(arg_name="blob", path=trigger.path, connection=trigger.connection, source=blob_source())
    @app.blob_output(arg_name="result", path=trigger.output_path, connection=trigger.connection)
    def blob_trigger(blob: func.InputStream, result: func.Out[str]) -> None:
        result.set(json_text(predict_blob(served, blob)))
