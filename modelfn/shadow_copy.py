"""A shadow copy that leaves the process: the request as it arrived and the live answer, as a
JSON message another invocation runs (a Lambda async invoke, a Pub/Sub message, a Storage
Queue message). Where a platform gives the shadow an invocation of its own, the live one only
sends this; the receiving side decodes the same input for the shadow version, runs it and
records the agreement exactly as an in-process copy would.

Imported only by functions that declare a shadow version: a one-model function never loads it."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from modelfn.traffic import run_shadow

MARKER = "modelfn_shadow_copy"
"""The key a shadow-copy message carries at its top level (its format version as value); event
adapters recognise the message by it."""
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ShadowInput:
    """A request as the live version read it, so the shadow can read it again with its own
    codec: `codec` (a body or an event's payload), `inference` (an OIP body, binary extension
    included) or `document` (an OIP request already parsed, from a direct invoke)."""

    kind: str
    body: bytes | None = None
    content_type: str | None = None
    payload: Any = None
    header_length: str | None = None

    def feeds(self, fn: Any) -> dict[str, np.ndarray]:
        from modelfn import protocol

        if self.kind == "inference":
            infer = protocol.decode_body(
                self.body or b"", self.header_length, fn.inputs, fn.spec.io.nan_policy, outputs=fn.outputs
            )
            return infer.feeds
        if self.kind == "document":
            feeds, _, _ = protocol.decode_request(self.payload, fn.inputs, fn.spec.io.nan_policy, outputs=fn.outputs)
            return feeds
        return fn.decode(self.body, self.content_type, self.payload).feeds  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class ShadowCopy:
    """What the shadow invocation needs: which function and version, the input, the live answer."""

    function: str
    version: str
    live_version: str
    input: ShadowInput
    live: dict[str, np.ndarray]

    def message(self) -> dict[str, Any]:
        """The JSON-ready message: a text body travels as text, any other as base64; numeric
        outputs as base64 of their bytes (exact, a third larger), others as JSON lists."""
        source = self.input
        message: dict[str, Any] = {
            MARKER: FORMAT,
            "function": self.function,
            "version": self.version,
            "live_version": self.live_version,
            "input": {"kind": source.kind, "content_type": source.content_type},
            "live": {name: _tensor(value) for name, value in self.live.items()},
            "sent": time.time(),
        }
        if source.body is not None:
            try:
                message["input"]["text"] = source.body.decode()
            except UnicodeDecodeError:
                message["input"]["base64"] = base64.b64encode(source.body).decode()
        if source.payload is not None:
            message["input"]["payload"] = source.payload
        if source.header_length is not None:
            message["input"]["header_length"] = source.header_length
        return message

    def encoded(self) -> bytes:
        return json.dumps(self.message(), separators=(",", ":"), default=_plain).encode()

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> ShadowCopy:
        given = message["input"]
        body = None
        if "text" in given:
            body = given["text"].encode()
        elif "base64" in given:
            body = base64.b64decode(given["base64"])
        source = ShadowInput(
            kind=given["kind"],
            body=body,
            content_type=given.get("content_type"),
            payload=given.get("payload"),
            header_length=given.get("header_length"),
        )
        live = {name: _array(value) for name, value in message["live"].items()}
        return cls(message["function"], message["version"], message["live_version"], source, live)


ShadowSink = Callable[[ShadowCopy], None]
"""Where a provider sends shadow copies instead of running them in the process."""


def is_shadow_copy(message: Any) -> bool:
    return isinstance(message, dict) and message.get(MARKER) == FORMAT


def run_copy(registry: Any, copy: ShadowCopy) -> None:
    """The receiving side: the shadow version reads the same input, runs, and its agreement with
    the live answer is recorded (metrics, logs); nothing is answered to anyone."""
    try:
        shadow = registry.traffic(copy.function).get(copy.version)
    except Exception as exc:  # a copy for a version this deployment lacks: logged, not retried
        import logging

        logging.getLogger("modelfn").warning(
            "shadow copy for %s version %s not run: %s", copy.function, copy.version, exc
        )
        return
    run_shadow(shadow, copy.input.feeds, copy.live)


def _tensor(value: Any) -> dict[str, Any]:
    array = np.asarray(value)
    if array.dtype.kind in "biuf":
        data = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()
        return {"dtype": array.dtype.str, "shape": list(array.shape), "base64": data}
    return {"shape": list(array.shape), "values": array.tolist()}


def _array(value: dict[str, Any]) -> np.ndarray:
    if "base64" in value:
        data = np.frombuffer(base64.b64decode(value["base64"]), dtype=np.dtype(value["dtype"]))
        return data.reshape(value["shape"])
    return np.asarray(value["values"], dtype=object).reshape(value["shape"])


def _plain(value: Any) -> Any:
    """Payload values JSON does not know (NumPy scalars and arrays from an event's parsing)."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")
