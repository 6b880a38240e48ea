"""A served function: its spec, its ONNX Runtime session, its codec and hooks. Load once,
then predict per request; adapters call nothing else."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelfn import protocol
from modelfn.codecs import Codec, Decoded, make_codec
from modelfn.errors import InferenceError, InvalidInput, ModelfnError
from modelfn.hooks import resolve_hook
from modelfn.session import create_session, runner, signature, warm_up
from modelfn.sources import Progress, resolve
from modelfn.spec import FunctionSpec

log = logging.getLogger("modelfn")

Outputs = dict[str, np.ndarray]


class ModelFunction:
    def __init__(self, spec: FunctionSpec, progress: Progress | None = None) -> None:
        started = time.perf_counter()
        self.spec = spec
        self.name = spec.name
        self.version = spec.model.version
        self.model_path = resolve(spec.model.source, spec.folder, spec.model.sha256, progress)
        self.session = create_session(self.model_path, spec.runtime)
        self.inputs, self.outputs = signature(self.session)
        self.output_names = [o.name for o in self.outputs]
        self._run = runner(self.session)
        self.preprocess = resolve_hook(spec, spec.hooks.preprocess)
        self.postprocess = resolve_hook(spec, spec.hooks.postprocess)
        tokenize = resolve_hook(spec, spec.hooks.tokenize)
        self.codec: Codec = make_codec(
            spec.io, self.inputs, self.outputs, tokenize and (lambda texts: self._hook(tokenize, texts))
        )
        self.warmed = spec.runtime.warmup and self._warm_up()
        self.load_seconds = time.perf_counter() - started

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def batchable(self) -> bool:
        """Requests can be merged: every input and output has a dynamic first axis."""
        return self.spec.batching.enabled and all(t.batched for t in (*self.inputs, *self.outputs))

    def decode(self, body: bytes | None = None, content_type: str | None = None, payload: Any = None) -> Decoded:
        """Feeds for a raw body (parsed by content type) or an already-parsed payload."""
        if payload is None:
            payload = self.codec.parse(body or b"", content_type)
        if self.preprocess is not None:
            payload = self._hook(self.preprocess, payload)
        return self.codec.decode(payload)

    def run(self, feeds: dict[str, np.ndarray]) -> Outputs:
        try:
            values = self._run(self.output_names, feeds)
        except Exception as exc:
            # ONNX Runtime checks values the graph metadata cannot express (an index out of range, say)
            raise InvalidInput(f"the model rejected the input: {_first_line(exc)}") from None
        return dict(zip(self.output_names, values, strict=True))

    def encode(self, outputs: Outputs, decoded: Decoded) -> Any:
        if self.postprocess is not None:
            return self._hook(self.postprocess, outputs)
        return self.codec.encode(outputs, decoded.single)

    def predict(
        self, body: bytes | None = None, content_type: str | None = "application/json", payload: Any = None
    ) -> Any:
        decoded = self.decode(body, content_type, payload)
        return self.encode(self.run(decoded.feeds), decoded)

    def infer_v2(self, request: Any) -> dict[str, Any]:
        """One Open Inference Protocol (KServe v2) inference request."""
        feeds, wanted, request_id = protocol.decode_request(request, self.inputs, self.spec.io.nan_policy)
        outputs = self.run(feeds)
        return protocol.encode_response(self.name, outputs, self.outputs, wanted, request_id)

    def metadata(self) -> dict[str, Any]:
        return protocol.model_metadata(self.name, self.inputs, self.outputs)

    def split(self, outputs: Outputs, rows: Sequence[int]) -> list[Outputs]:
        """Cut a merged batch's outputs back into each caller's own rows."""
        bounds = np.cumsum([0, *rows])
        return [{k: v[bounds[i] : bounds[i + 1]] for k, v in outputs.items()} for i in range(len(rows))]

    def _warm_up(self) -> bool:
        """A text function warms through its tokenizer too, so the first request loads nothing."""
        if self.spec.io.codec == "text":
            try:
                self.run(self.decode(payload={"text": "warm up"}).feeds)
                return True
            except ModelfnError as exc:
                log.info("%s: warm-up through the tokenizer skipped: %s", self.name, exc.message)
        return warm_up(self.session, self.inputs)

    def _hook(self, hook: Any, value: Any) -> Any:
        try:
            return hook(value)
        except ModelfnError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidInput(f"{self.name}: {hook.__name__} refused the input: {exc}") from None
        except Exception as exc:
            log.exception("hook %s failed", hook.__name__)
            raise InferenceError(f"{self.name}: {hook.__name__} failed") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
