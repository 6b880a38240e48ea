"""Many requests scored through one function: each decoded by the function's codec (the same
payloads as the HTTP route), merged into `session.run` batches of `max_batch_size` rows the
way the micro-batcher merges them, and answered one by one, in order, with an error for each
request that failed and an answer for every other."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from modelfn.batching import _group_key, merge
from modelfn.codecs import Decoded
from modelfn.errors import ModelfnError
from modelfn.events import reason
from modelfn.function import ModelFunction, Outputs

WINDOW_BATCHES = 8
"""Requests decoded ahead, in batches: requests that cannot merge with their neighbours
(another token length without padding, say) still find partners within the window."""


@dataclass(frozen=True)
class Request:
    """One request: a parsed payload, or a raw body with its content type (an image file)."""

    payload: Any = None
    body: bytes | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Failure:
    """Why one request got no answer: the code and message the HTTP route would answer with."""

    code: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        return cls(exc.code if isinstance(exc, ModelfnError) else "internal_error", reason(exc))

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Outcome:
    answer: Any = None
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


class Scorer:
    """A loaded function and the rule for merging its requests; `score` keeps the input order."""

    def __init__(self, fn: ModelFunction, max_batch_size: int | None = None, by_length: bool = True) -> None:
        self.fn = fn
        self.by_length = by_length
        self.max_rows = max(1, max_batch_size or fn.spec.batching.max_batch_size)
        self.pad = fn.spec.batching.pad_value
        self.batchable = fn.batchable
        self.runs = 0

    def score(self, requests: Iterable[Request | Outcome]) -> Iterator[Outcome]:
        """An outcome per request, in order. An `Outcome` given in place of a request (a row
        that could not even be read) passes through where it stands."""
        items = iter(requests)
        while window := list(islice(items, self.max_rows * WINDOW_BATCHES)):
            yield from self._window(window)

    def _window(self, window: list[Request | Outcome]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(window)
        groups: dict[tuple[object, ...], list[tuple[int, Decoded]]] = {}
        for index, item in enumerate(window):
            if isinstance(item, Outcome):
                outcomes[index] = item
                continue
            try:
                decoded = self.fn.decode(item.body, item.content_type, item.payload)
                feeds = decoded.feeds  # texts are tokenised here, so a text the tokenizer refuses fails its own row
            except Exception as exc:  # one bad request fails only its own row
                outcomes[index] = Outcome(failure=Failure.of(exc))
                continue
            key = _group_key(feeds, self.pad is not None) if self.batchable else ("alone", index)
            groups.setdefault(key, []).append((index, decoded))
        for group in groups.values():
            for batch in self._batches(group):
                for index, outcome in self._run(batch):
                    outcomes[index] = outcome
        return [o if o is not None else Outcome(failure=Failure("internal_error", "not scored")) for o in outcomes]

    def _batches(self, group: list[tuple[int, Decoded]]) -> Iterator[list[tuple[int, Decoded]]]:
        if self.pad is not None and self.by_length:
            # padded merges cost the longest request's length for every row: neighbours in length
            # share a batch (answers are placed back by index, so the output order is the input's)
            group = sorted(group, key=lambda item: _width(item[1]))
        batch: list[tuple[int, Decoded]] = []
        rows = 0
        for item in group:
            if batch and rows + item[1].rows > self.max_rows:
                yield batch
                batch, rows = [], 0
            batch.append(item)
            rows += item[1].rows
        if batch:
            yield batch

    def _run(self, batch: list[tuple[int, Decoded]]) -> list[tuple[int, Outcome]]:
        try:
            if len(batch) == 1:
                parts: list[Outputs] = [self._session_run(batch[0][1].feeds)]
            else:
                feeds = merge([decoded.feeds for _, decoded in batch], self.pad)
                parts = self.fn.split(self._session_run(feeds), [decoded.rows for _, decoded in batch])
        except Exception as exc:
            if len(batch) == 1:
                return [(batch[0][0], Outcome(failure=Failure.of(exc)))]
            # a merged run failed: each request alone, so the error lands on its own row only
            return [result for item in batch for result in self._run([item])]
        return [(index, self._encode(outputs, decoded)) for (index, decoded), outputs in zip(batch, parts, strict=True)]

    def _session_run(self, feeds: dict[str, Any]) -> Outputs:
        self.runs += 1
        return self.fn.run(feeds)

    def _encode(self, outputs: Outputs, decoded: Decoded) -> Outcome:
        try:
            return Outcome(answer=self.fn.encode(outputs, decoded))
        except Exception as exc:
            return Outcome(failure=Failure.of(exc))


def _width(decoded: Decoded) -> int:
    return max((a.shape[1] for a in decoded.feeds.values() if a.ndim >= 2), default=0)
