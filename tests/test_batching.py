"""The micro-batcher at the two ends of the load: a lone caller's request runs on the event
loop itself (no thread hand-offs), a burst that follows still merges, and a steady set of
callers keeps full batches instead of splitting into cohorts that take turns with part
batches. In-process on the real batcher and ONNX Runtime; each run is stretched by a sleep so
that it is long against the loop's turns, as a real model's run is."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from onnx_models import function_folder, row_sum
from test_batching_faults import _Instrumented, rows_of

from modelfn import batching
from modelfn.batching import MicroBatcher
from modelfn.function import ModelFunction, Outputs
from modelfn.registry import Registry


class Timed:
    """`fn.run` as the batcher calls it: at least `seconds` long, each run's rows and thread kept."""

    def __init__(self, fn: ModelFunction, seconds: float) -> None:
        self.real, self.seconds = fn.run, seconds
        self.runs: list[tuple[int, int]] = []

    def __call__(self, feeds: dict[str, np.ndarray]) -> Outputs:
        self.runs.append((len(feeds["x"]), threading.get_ident()))
        time.sleep(self.seconds)
        return self.real(feeds)

    @property
    def sizes(self) -> list[int]:
        return [rows for rows, _ in self.runs]


def rows_function(tmp_path_factory: pytest.TempPathFactory, max_latency_ms: float) -> ModelFunction:
    root = tmp_path_factory.mktemp("rows")
    toml = f"[batching]\nmax_batch_size = 32\nmax_latency_ms = {max_latency_ms}"
    return Registry.from_dir(function_folder(root, "rows", row_sum(4), toml).parent).load("rows")


async def ask(batcher: MicroBatcher, request: int) -> None:
    rows = rows_of(request, 1)
    decoded = batcher.fn.decode(json.dumps({"x": rows.tolist()}).encode(), "application/json")
    np.testing.assert_array_equal((await batcher.submit(decoded))["total"], rows.sum(axis=1))


def drive(fn: ModelFunction, run: Timed, calls: Callable[[MicroBatcher], Awaitable[None]]) -> int:
    """`calls` made on a batcher whose runs go through `run`; returns the event loop's thread."""

    async def scenario() -> int:
        with ThreadPoolExecutor(2) as executor:
            batcher = MicroBatcher(fn, executor)
            batcher.fn = _Instrumented(fn, run)  # type: ignore[arg-type,assignment]
            await calls(batcher)
            await batcher.close()
        return threading.get_ident()

    return asyncio.run(scenario())


def test_a_lone_caller_runs_on_the_loop_and_a_burst_after_it_still_merges(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    fn = rows_function(tmp_path_factory, max_latency_ms=50)
    run = Timed(fn, 0.002)

    async def calls(batcher: MicroBatcher) -> None:
        for request in range(4):  # one caller, one request at a time
            await ask(batcher, request)
        await asyncio.gather(*(ask(batcher, 100 + i) for i in range(24)))

    loop_thread = drive(fn, run, calls)
    lone, burst = run.runs[:4], run.runs[4:]
    assert lone[0][1] != loop_thread  # how long a run takes is not known yet: a thread
    assert [thread for _, thread in lone[1:]] == [loop_thread] * 3
    assert sum(rows for rows, _ in burst) == 24 and max(rows for rows, _ in burst) > 1, run.sizes


def test_a_run_longer_than_max_latency_never_holds_the_loop(tmp_path_factory: pytest.TempPathFactory) -> None:
    fn = rows_function(tmp_path_factory, max_latency_ms=5)
    run = Timed(fn, 0.02)

    async def calls(batcher: MicroBatcher) -> None:
        for request in range(4):
            await ask(batcher, request)

    loop_thread = drive(fn, run, calls)
    assert run.sizes == [1, 1, 1, 1]
    assert loop_thread not in {thread for _, thread in run.runs}


def closed_loop(fn: ModelFunction, run: Timed, callers: int, rounds: int) -> list[int]:
    """`callers` clients that each send their next request once answered, the i-th after i/2 ms
    (as answers go out one by one and clients come back one by one): rows of each run."""

    async def client(batcher: MicroBatcher, index: int) -> None:
        for round_ in range(rounds):
            await ask(batcher, round_ * 100 + index)
            await asyncio.sleep(index * 0.0005)

    async def calls(batcher: MicroBatcher) -> None:
        await asyncio.gather(*(client(batcher, i) for i in range(callers)))

    drive(fn, run, calls)
    return run.sizes


def test_steady_callers_keep_full_batches(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fn = rows_function(tmp_path_factory, max_latency_ms=50)
    # A run of 40 ms: a batch may wait up to 10 ms (a quarter) for callers still on their way.
    sizes = closed_loop(fn, Timed(fn, 0.04), callers=8, rounds=6)
    assert sum(sizes) == 48
    assert sizes[1:].count(8) >= len(sizes[1:]) - 1, sizes  # one late caller allowed on a loaded machine

    # Not waiting for them, the callers split into cohorts that take turns with part batches.
    monkeypatch.setattr(batching, "FILL_SHARE", 0.0)
    split = closed_loop(fn, Timed(fn, 0.04), callers=8, rounds=6)
    assert sum(split) == 48 and split[1:].count(8) < len(split[1:]) // 2, split
