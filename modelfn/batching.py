"""Micro-batching: concurrent requests to one function are merged into a single
`session.run` along the batch axis, and each caller gets exactly its own rows back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from modelfn.codecs import Decoded, Feeds
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
    """One per function. A single worker drains the queue: it takes whatever has arrived
    (up to `max_batch_size` rows), waits at most `max_latency_ms` for more, runs once in a
    thread, and hands each caller its rows. While one batch runs the next one gathers."""

    def __init__(
        self, fn: ModelFunction, executor: ThreadPoolExecutor, on_batch: Callable[[int], None] | None = None
    ) -> None:
        self.fn = fn
        self.executor = executor
        self.max_rows = fn.spec.batching.max_batch_size
        self.max_wait = fn.spec.batching.max_latency_ms / 1000
        self.pad = fn.spec.batching.pad_value
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None
        self.on_batch = on_batch

    async def submit(self, decoded: Decoded) -> Outputs:
        loop = asyncio.get_running_loop()
        if self.worker is not None and self.worker.get_loop() is not loop:
            # an adapter that runs each request on a fresh event loop: start over on this one
            self.queue, self.worker = asyncio.Queue(), None
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._drain())
        future: asyncio.Future[Outputs] = loop.create_future()
        await self.queue.put(_Pending(decoded, future))
        return await future

    async def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker

    async def _gather(self) -> list[_Pending]:
        batch = [await self.queue.get()]
        rows = batch[0].rows
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_rows:
            if self.queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = self.queue.get_nowait()
            batch.append(item)
            rows += item.rows
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [p for p in await self._gather() if not p.future.done()]  # cancelled callers drop out
            groups: dict[tuple[object, ...], list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(_group_key(pending.decoded.feeds, self.pad is not None), []).append(pending)
            for group in groups.values():
                try:
                    feeds = merge([p.decoded.feeds for p in group], self.pad)
                    outputs = await loop.run_in_executor(self.executor, self.fn.run, feeds)
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

    async def _one_by_one(self, group: list[_Pending]) -> None:
        """A merged run failed: run each request alone so the error lands on its sender only."""
        loop = asyncio.get_running_loop()
        for pending in group:
            try:
                result = await loop.run_in_executor(self.executor, self.fn.run, pending.decoded.feeds)
            except Exception as exc:
                if not pending.future.done():
                    pending.future.set_exception(exc)
                continue
            if not pending.future.done():
                pending.future.set_result(result)
