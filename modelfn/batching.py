"""Micro-batching: concurrent requests to one function are merged into a single
`session.run` along the batch axis, and each caller gets exactly its own rows back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
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

# The most a batch waits for the last run's callers, as a share of that run's time: the model
# idles at most this much longer when they do not come.
FILL_SHARE = 0.25
# A shorter wait than this cannot see a client come back (a loopback round trip takes longer):
# for a cheap model it would only cost the loop a turn.
FILL_MIN_S = 0.0002


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
    """One per function, on the event loop. A request that finds the model idle, nobody
    waiting and no other caller lately runs at once (a lone caller never waits out a timer),
    on the loop itself when the function's runs are short (at most `max_latency_ms` of the
    loop). While a batch runs, the next one gathers: it starts when a run slot frees up
    (`runs` in flight at most; one at a time for a session whose threads would fight another
    run), or once it is full (`max_batch_size` rows) or has waited `max_latency_ms` while a
    slot is free. So batches grow with the load.

    When the model frees up with fewer rows gathered than its last run answered plus those
    still waiting then (about the number of callers: a closed loop's clients come back), the
    batch waits for them, at most `max_latency_ms` and a quarter of the last run's time.
    Otherwise a steady load splits into two cohorts that take turns with half-size batches,
    each run less efficient than a full one."""

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
        # several would fight the other run for them: its runs take turns, a second batch starts
        # (and merges or tokenises beside the run) only once full.
        self.model_turn = threading.Lock() if fn.spec.runtime.threads != 1 else None
        self.last_run_s = math.inf  # unknown until the first run: that one goes to a thread
        self.waiting_rows = 0  # submitted, not yet in a run
        self.callers = 1  # rows of the last run and those waiting when it ended

    async def submit(self, decoded: Decoded) -> Outputs:
        loop = asyncio.get_running_loop()
        if self.worker is not None and self.worker.get_loop() is not loop:
            # an adapter that runs each request on a fresh event loop: start over on this one
            self.queue, self.worker, self.in_flight, self.waiting_rows = asyncio.Queue(), None, set(), 0
        if self._alone(decoded):
            # The model is idle, nobody waits or is expected: run here, unless others turn up
            # while the loop takes one more turn (it reads its sockets). Without that turn, each
            # request read after a run would find the model idle, and a burst would never batch.
            self.waiting_rows += decoded.rows
            try:
                await asyncio.sleep(0)
            finally:
                self.waiting_rows -= decoded.rows
            if self._alone(decoded):
                return self._run_inline(decoded)
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._drain())
        future: asyncio.Future[Outputs] = loop.create_future()
        self.waiting_rows += decoded.rows
        self.queue.put_nowait(_Pending(decoded, future))
        return await future

    def _alone(self, decoded: Decoded) -> bool:
        """The model idle, nobody waiting, the last run answered only about this many rows, and
        runs short enough (`max_latency_ms`) to hold the loop for one."""
        return (
            not self.in_flight
            and not self.waiting_rows
            and self.callers <= decoded.rows
            and self.last_run_s <= self.max_wait
        )

    def _run_inline(self, decoded: Decoded) -> Outputs:
        """Run on the loop, as a plain `async def` endpoint would. The way through the queue
        and a thread costs ~150 us here (two thread hand-offs and the batcher's turns), twenty
        times breast-cancer's run: a lone caller of a small model gets twice the answers."""
        outputs = self._run_model(decoded.feeds)
        if self.on_batch:
            self.on_batch(decoded.rows)
        self.callers = decoded.rows + self.waiting_rows
        return outputs

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
        filled_by = None
        while rows < self.max_rows:
            timeout = None  # no slot free: wait for one (or a full batch)
            if len(self.in_flight) < self.runs and not (self.in_flight and self.model_turn):
                now = time.monotonic()
                if self.in_flight:  # a slot is free beside another run: gather up to max_latency_ms
                    until = deadline
                elif rows >= self.callers:  # the model is idle and everyone is here
                    break
                else:  # the model is idle: the last run's callers may be on their way back
                    if filled_by is None:
                        fill = min(self.max_wait, FILL_SHARE * self.last_run_s)
                        filled_by = now + fill if fill >= FILL_MIN_S else now
                    until = filled_by
                if now >= until:
                    break
                timeout = until - now
            getter: asyncio.Task[_Pending] = asyncio.ensure_future(self.queue.get())
            waits: set[asyncio.Future[Any]] = {getter, *self.in_flight}
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if getter.done() or not getter.cancel():  # cancel() is False when it was taken meanwhile
                batch.append(getter.result())
                rows = self._take_queued(batch, rows + batch[-1].rows)
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            gathered = await self._gather()
            self.waiting_rows -= sum(p.rows for p in gathered)
            batch = [p for p in gathered if not p.future.done()]  # cancelled callers drop out
            if not batch:
                continue
            task = loop.create_task(self._run(batch))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            await self._run_groups(batch)
        finally:  # out of `in_flight` before its callers resume (a done callback runs after them)
            self.in_flight.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def _run_groups(self, batch: list[_Pending]) -> None:
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
            rows = sum(p.rows for p in group)
            if self.on_batch:
                self.on_batch(rows)
            self.callers = rows + self.waiting_rows
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
        with self.model_turn or contextlib.nullcontext():
            started = time.perf_counter()
            outputs = self.fn.run(feeds)
            self.last_run_s = time.perf_counter() - started  # the run alone, not the wait for its turn
        return outputs

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
