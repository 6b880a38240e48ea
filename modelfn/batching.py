"""Micro-batching: concurrent requests to one function are merged into a single
`session.run` along the batch axis, and each caller gets exactly its own rows back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelfn.codecs import Decoded, Feeds, Texts
from modelfn.function import ModelFunction, Outputs

log = logging.getLogger("modelfn")


@dataclass
class _Pending:
    decoded: Decoded
    future: asyncio.Future[Outputs]
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = self.decoded.rows


def _group_key(feeds: Feeds, pad: bool) -> tuple[object, ...]:
    """Requests merge when their trailing axes agree (with padding, when only axis 1 differs)."""
    return tuple((name, a.dtype.str, a.shape[2:] if pad else a.shape[1:]) for name, a in sorted(feeds.items()))


def _texts_key(decoded: Decoded, pad: bool) -> tuple[object, ...]:
    """Texts not yet tokenised merge with each other when padding is declared safe: the whole
    batch is tokenised at once (the tokenizer pads); otherwise each request's own feeds decide."""
    if pad and isinstance(decoded, Texts) and not decoded.tokenised:
        return ("texts",)
    return _group_key(decoded.feeds, pad)


def merge(feeds: list[Feeds], pad_value: float | None) -> Feeds:
    merged = {}
    for name in feeds[0]:
        parts = [f[name] for f in feeds]
        if pad_value is not None and parts[0].ndim >= 2:
            width = max(p.shape[1] for p in parts)
            parts = [
                np.pad(p, [(0, 0), (0, width - p.shape[1])] + [(0, 0)] * (p.ndim - 2), constant_values=pad_value)
                if p.shape[1] < width
                else p
                for p in parts
            ]
        merged[name] = np.concatenate(parts, axis=0)
    return merged


class MicroBatcher:
    """One per function, on the event loop; no lockstep. A request that finds the model idle
    runs at once, with whatever else is already queued (no waiting at light load). While a
    batch runs, the next one gathers: it starts when a run slot frees up (`runs` in flight
    at most), or once it is full (`max_batch_size` rows) or has waited `max_latency_ms` while
    a slot is free. So batches grow with the load, up to the maximum, and the model never
    idles while answers go out and the next requests arrive."""

    def __init__(
        self,
        fn: ModelFunction,
        executor: ThreadPoolExecutor,
        on_batch: Callable[[int], None] | None = None,
        runs: int = 2,
    ) -> None:
        self.fn = fn
        self.executor = executor
        self.max_rows = fn.spec.batching.max_batch_size
        self.max_wait = fn.spec.batching.max_latency_ms / 1000
        self.pad = fn.spec.batching.pad_value
        self.runs = runs
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None
        self.in_flight: set[asyncio.Task[None]] = set()
        self.on_batch = on_batch
        # A session with one intra-op thread runs beside another on the next core; one that uses
        # several would fight the other run for them: its runs take turns, while the next batch's
        # merging, splitting and answers still overlap the model's work.
        self.model_turn = threading.Lock() if fn.spec.runtime.threads != 1 else None

    async def submit(self, decoded: Decoded) -> Outputs:
        loop = asyncio.get_running_loop()
        if self.worker is not None and self.worker.get_loop() is not loop:
            # an adapter that runs each request on a fresh event loop: start over on this one
            self.queue, self.worker, self.in_flight = asyncio.Queue(), None, set()
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._drain())
        future: asyncio.Future[Outputs] = loop.create_future()
        self.queue.put_nowait(_Pending(decoded, future))
        return await future

    async def close(self) -> None:
        for task in [self.worker, *self.in_flight]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _take_queued(self, batch: list[_Pending], rows: int) -> int:
        while rows < self.max_rows and not self.queue.empty():
            item = self.queue.get_nowait()
            batch.append(item)
            rows += item.rows
        return rows

    async def _gather(self) -> list[_Pending]:
        batch = [await self.queue.get()]
        rows = self._take_queued(batch, batch[0].rows)
        deadline = time.monotonic() + self.max_wait
        # the model is busy: this batch fills while it works, until a slot frees up (and a little
        # longer, up to max_latency_ms, while the other slot still runs); an idle model never waits
        while rows < self.max_rows and self.in_flight:
            slot_free = len(self.in_flight) < self.runs
            if slot_free and time.monotonic() >= deadline:
                break
            getter: asyncio.Task[_Pending] = asyncio.ensure_future(self.queue.get())
            waits: set[asyncio.Future[Any]] = {getter, *self.in_flight}
            timeout = max(0.0, deadline - time.monotonic()) if slot_free else None
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if getter.done() or not getter.cancel():  # cancel() is False when it was taken meanwhile
                batch.append(getter.result())
                rows = self._take_queued(batch, rows + batch[-1].rows)
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [p for p in await self._gather() if not p.future.done()]  # cancelled callers drop out
            if not batch:
                continue
            task = loop.create_task(self._run(batch))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        groups: dict[tuple[object, ...], list[_Pending]] = {}
        for pending in batch:
            try:
                key = _texts_key(pending.decoded, self.pad is not None)
            except Exception as exc:  # texts the tokenizer refuses, tokenised alone: only their sender hears
                if not pending.future.done():
                    pending.future.set_exception(exc)
                continue
            groups.setdefault(key, []).append(pending)
        for key, group in groups.items():
            try:
                if key == ("texts",):
                    texts = [text for p in group for text in p.decoded.texts]  # type: ignore[attr-defined]
                    outputs = await loop.run_in_executor(self.executor, self._run_texts, texts)
                else:
                    feeds = merge([p.decoded.feeds for p in group], self.pad)
                    outputs = await loop.run_in_executor(self.executor, self._run_model, feeds)
                parts = self.fn.split(outputs, [p.rows for p in group])
            except Exception as exc:  # one bad merged run fails only its own callers
                if len(group) > 1:
                    await self._one_by_one(group)
                    continue
                parts = [exc]  # type: ignore[list-item]
            if self.on_batch:
                self.on_batch(sum(p.rows for p in group))
            for pending, part in zip(group, parts, strict=True):
                if pending.future.done():
                    continue
                if isinstance(part, BaseException):
                    pending.future.set_exception(part)
                else:
                    pending.future.set_result(part)

    def _run_texts(self, texts: list[str]) -> Outputs:
        """A batch of texts tokenised in one call, then run: in the model's thread, off the event loop."""
        return self._run_model(self.fn.codec.feeds(texts))  # type: ignore[attr-defined]

    def _run_model(self, feeds: Feeds) -> Outputs:
        if self.model_turn is None:
            return self.fn.run(feeds)
        with self.model_turn:
            return self.fn.run(feeds)

    async def _one_by_one(self, group: list[_Pending]) -> None:
        """A merged run failed: run each request alone so the error lands on its sender only."""
        loop = asyncio.get_running_loop()
        for pending in group:
            try:
                result = await loop.run_in_executor(self.executor, self._run_model, pending.decoded.feeds)
            except Exception as exc:
                if not pending.future.done():
                    pending.future.set_exception(exc)
                continue
            if not pending.future.done():
                pending.future.set_result(result)
