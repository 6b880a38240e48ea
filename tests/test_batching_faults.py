"""The micro-batcher under callers that give up: cancelled before their batch is gathered,
timed out at random moments, cancelled while their batch is running, next to requests that
make a merged run fail. Survivors get exactly their own rows, the failing request alone gets
its error, and afterwards nothing is left behind: an empty queue, a live worker, no caller's
future still pending, no task but the worker. In-process on the real batcher and ONNX
Runtime, then through uvicorn with real clients that hang up."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from live_server import LiveServer, wait_until
from onnx_models import function_folder, row_sum

from modelfn.asgi import create_app
from modelfn.batching import MicroBatcher, _Pending
from modelfn.errors import InvalidInput
from modelfn.function import ModelFunction, Outputs
from modelfn.registry import Registry

MAX_ROWS = 16
POISON = -1.0  # a row whose third value is this makes any run holding it fail


def rows_of(request: int, count: int, poisoned: bool = False) -> np.ndarray:
    """`count` rows that name their request in column 1 and differ from every other row."""
    rows = np.array([[request * 8 + j, request, 1.0, 2.0] for j in range(count)], dtype=np.float32)
    if poisoned:
        rows[:, 2] = POISON
    return rows


_EARLIER: list[_Pending] = []


@pytest.fixture(autouse=True)
def _only_this_tests_callers() -> Iterator[None]:
    """Callers left by servers of earlier tests in this process are not this test's business:
    hold them (so their ids stay theirs) and leave them out of `live_pending`."""
    gc.collect()
    _EARLIER[:] = [o for o in gc.get_objects() if isinstance(o, _Pending)]
    yield
    _EARLIER.clear()


def live_pending() -> list[_Pending]:
    gc.collect()
    earlier = {id(o) for o in _EARLIER}
    return [o for o in gc.get_objects() if isinstance(o, _Pending) and id(o) not in earlier]


@pytest.fixture(scope="module")
def rows_fn(tmp_path_factory: pytest.TempPathFactory) -> ModelFunction:
    root = tmp_path_factory.mktemp("rows")
    function_folder(root, "rows", row_sum(4), f"[batching]\nmax_batch_size = {MAX_ROWS}\nmax_latency_ms = 2")
    return Registry.from_dir(root).load("rows")


class InFlight:
    """`fn.run` as the batcher calls it, plus two things a test needs: it cancels the callers
    named in `cancel` while their merged batch is in the thread (before the batcher can hand
    out results), and it fails any run holding a poisoned row, as a model would refuse one.
    A short pause keeps batches in flight long enough for timeouts to land during runs."""

    def __init__(self, fn: ModelFunction, loop: asyncio.AbstractEventLoop) -> None:
        self.real = fn.run
        self.loop = loop
        self.cancel: dict[int, asyncio.Task[Outputs]] = {}
        self.cancelled_in_flight = 0
        self.runs: list[int] = []
        self.active = 0

    def __call__(self, feeds: dict[str, np.ndarray]) -> Outputs:
        self.active += 1
        try:
            x = feeds["x"]
            self.runs.append(len(x))
            for request in {int(r) for r in x[:, 1]} & set(self.cancel):
                # queued on the loop before the run's own completion callback, so it lands first
                self.loop.call_soon_threadsafe(self.cancel.pop(request).cancel)
                self.cancelled_in_flight += 1
            time.sleep(0.002)
            if (x[:, 2] == POISON).any():
                raise InvalidInput("poisoned row")
            return self.real(feeds)
        finally:
            self.active -= 1


class _Instrumented:
    """The function as the batcher sees it, with `run` going through `InFlight`."""

    def __init__(self, fn: ModelFunction, run: InFlight) -> None:
        self._fn = fn
        self.run = run

    def __getattr__(self, name: str) -> object:
        return getattr(self._fn, name)


async def one_round(batcher: MicroBatcher, in_flight: InFlight, rng: random.Random, first: int) -> dict[str, int]:
    """64 concurrent callers with a random fate each; asserts every outcome, returns the tally."""
    fn = batcher.fn
    fates = rng.choices(["keep", "cancel-queued", "timeout", "cancel-running", "poison"], [6, 1, 2, 2, 1], k=64)
    payloads = {first + i: rows_of(first + i, rng.randint(1, 3), fate == "poison") for i, fate in enumerate(fates)}

    async def call(request: int, fate: str) -> Outputs:
        decoded = fn.decode(json.dumps({"x": payloads[request].tolist()}).encode(), "application/json")
        if fate == "timeout":
            return await asyncio.wait_for(batcher.submit(decoded), timeout=rng.uniform(0, 0.006))
        return await batcher.submit(decoded)

    tasks = {}
    for offset, fate in enumerate(fates):
        request = first + offset
        tasks[request] = asyncio.get_running_loop().create_task(call(request, fate))
        if fate == "cancel-running":
            in_flight.cancel[request] = tasks[request]
        if rng.random() < 0.3:
            await asyncio.sleep(0)  # let some callers queue and a batch start while others arrive
    await asyncio.sleep(0)
    for request, fate in zip(tasks, fates, strict=True):
        if fate == "cancel-queued":
            tasks[request].cancel()
    outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)

    tally = dict.fromkeys(("answered", "refused", "gave_up"), 0)
    for (request, fate), outcome in zip(zip(tasks, fates, strict=True), outcomes, strict=True):
        if isinstance(outcome, asyncio.CancelledError | TimeoutError):
            assert fate in ("cancel-queued", "timeout", "cancel-running"), f"request {request} ({fate}) gave up"
            tally["gave_up"] += 1
        elif isinstance(outcome, BaseException):
            assert fate == "poison" and isinstance(outcome, InvalidInput), f"request {request} ({fate}): {outcome!r}"
            tally["refused"] += 1
        else:
            assert fate != "poison", f"request {request} was answered"
            np.testing.assert_array_equal(outcome["total"], payloads[request].sum(axis=1))
            tally["answered"] += 1
    in_flight.cancel.clear()  # callers whose batch never ran (they gave up first) stay named: forget them
    return tally


async def settle(batcher: MicroBatcher, in_flight: InFlight) -> None:
    """Wait (boundedly) until the worker has taken every queued caller, finished its run and
    stopped waiting for more callers to join a batch: idle, with nothing but itself running."""

    def busy() -> bool:
        return bool(batcher.queue.qsize() or in_flight.active or len(asyncio.all_tasks()) > 2)

    deadline = time.monotonic() + 10
    while busy() and time.monotonic() < deadline:
        await asyncio.sleep(0.002)


def assert_clean(batcher: MicroBatcher, round_first: int) -> None:
    """Nothing queued, the worker alive and idle, no caller's future left pending, and no
    caller of an earlier round still referenced: nothing accumulates from round to round.
    (The last round's callers may still be referenced: the worker's last batch, until the
    next, and the round's own results and exceptions.)"""
    assert batcher.queue.qsize() == 0
    assert batcher.worker is not None and not batcher.worker.done()
    pending = live_pending()
    assert [p for p in pending if not p.future.done()] == []
    assert sorted({int(p.decoded.feeds["x"][0, 1]) for p in pending if p.decoded.feeds["x"][0, 1] < round_first}) == []
    assert asyncio.all_tasks() == {asyncio.current_task(), batcher.worker}


def test_batcher_under_cancellations_timeouts_and_failures_loses_and_mixes_nothing(rows_fn: ModelFunction) -> None:
    async def scenario() -> tuple[dict[str, int], InFlight]:
        loop = asyncio.get_running_loop()
        in_flight = InFlight(rows_fn, loop)
        with ThreadPoolExecutor(2) as executor:
            batcher = MicroBatcher(rows_fn, executor)
            batcher.fn = _Instrumented(rows_fn, in_flight)  # type: ignore[assignment]
            totals = dict.fromkeys(("answered", "refused", "gave_up"), 0)
            rng = random.Random(7)
            for round_ in range(30):
                for key, count in (await one_round(batcher, in_flight, rng, round_ * 100)).items():
                    totals[key] += count
                await settle(batcher, in_flight)
                assert_clean(batcher, round_ * 100)
            # still serving after all that
            decoded = rows_fn.decode(json.dumps({"x": rows_of(9999, 2).tolist()}).encode(), "application/json")
            np.testing.assert_array_equal((await batcher.submit(decoded))["total"], rows_of(9999, 2).sum(axis=1))
            await batcher.close()
        return totals, in_flight

    totals, in_flight = asyncio.run(scenario())
    assert sum(totals.values()) == 30 * 64
    assert totals["answered"] > 900 and totals["refused"] > 50 and totals["gave_up"] > 300, totals
    assert in_flight.cancelled_in_flight > 50, "no caller was cancelled while its batch ran"
    assert max(in_flight.runs) > 1, "no request was merged with another"


# Through uvicorn: clients that hang up on the server


@pytest.fixture
def rows_server(tmp_path: Path) -> Iterator[LiveServer]:
    function_folder(tmp_path, "rows", row_sum(4), f"[batching]\nmax_batch_size = {MAX_ROWS}\nmax_latency_ms = 5")
    with LiveServer(create_app(Registry.from_dir(tmp_path))) as live:
        yield live


async def _http_round(url: str, rng: random.Random, first: int) -> tuple[int, int]:
    """48 requests; a third from a client with a tiny timeout, a sixth cancelled at a random
    moment (the connection is dropped); every request that gets an answer gets its own rows."""
    payloads = {first + i: rows_of(first + i, rng.randint(1, 3)) for i in range(48)}
    answered = gave_up = 0
    async with (
        httpx.AsyncClient(timeout=30) as patient,
        httpx.AsyncClient(timeout=httpx.Timeout(rng.uniform(0.001, 0.02))) as impatient,
    ):
        tasks = {}
        for request, rows in payloads.items():
            client = impatient if request % 3 == 0 else patient
            tasks[request] = asyncio.create_task(client.post(f"{url}/functions/rows", json={"x": rows.tolist()}))
        await asyncio.sleep(rng.uniform(0, 0.01))
        for request in list(tasks)[1::6]:
            tasks[request].cancel()
        outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)
    for request, outcome in zip(tasks, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, asyncio.CancelledError | httpx.TimeoutException), repr(outcome)
            gave_up += 1
            continue
        assert outcome.status_code == 200, outcome.text
        assert outcome.json() == {"total": payloads[request].sum(axis=1).tolist()}
        answered += 1
    return answered, gave_up


def _server_state(live: LiveServer) -> tuple[int, bool, list[_Pending], set[str]]:
    """The batcher's queue length, whether its worker is alive, the callers not answered,
    and the names of the tasks running on the server's loop, read on that loop."""
    batcher = live.app.service.batchers["rows"]
    loop = batcher.worker.get_loop()

    async def read() -> tuple[int, bool, set[str]]:
        coroutines = {t.get_coro().__qualname__ for t in asyncio.all_tasks() if t is not asyncio.current_task()}
        return batcher.queue.qsize(), not batcher.worker.done(), coroutines

    queued, alive, coroutines = asyncio.run_coroutine_threadsafe(read(), loop).result(10)
    unanswered = [p for p in live_pending() if not p.future.done()]
    return queued, alive, unanswered, coroutines


def test_server_with_clients_that_hang_up_keeps_answering_and_leaves_nothing_behind(
    rows_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(11)
    answered = gave_up = 0
    with caplog.at_level(logging.ERROR):
        for round_ in range(12):
            a, g = asyncio.run(_http_round(rows_server.url, rng, round_ * 100))
            answered, gave_up = answered + a, gave_up + g
    assert answered > 200 and gave_up > 100, (answered, gave_up)

    # the server finishes what hung-up clients left: wait for that, then nothing may remain
    deadline = time.monotonic() + 30
    while True:
        queued, alive, unanswered, coroutines = _server_state(rows_server)
        handlers = {c for c in coroutines if "run_asgi" in c or "app" in c.lower()}
        if (queued, unanswered, handlers) == (0, [], set()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (queued, alive, unanswered) == (0, True, [])
    assert handlers == set(), f"request handlers still running: {coroutines}"
    # a client hanging up is routine, not an error with a traceback in the server's log
    assert [r.getMessage() for r in caplog.records if r.name.startswith("modelfn")] == []
    assert httpx.post(f"{rows_server.url}/functions/rows", json={"x": [[1, 2, 3, 4]]}).json() == {"total": [10.0]}
    assert threading.active_count() < 50


def test_clients_that_hang_up_before_their_body_arrives_log_no_error(
    rows_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Content-Length promises more than is sent, then the connection drops: the server sees
    the client leave while reading the body. That is routine, not a traceback in the log."""
    port = int(rows_server.url.rsplit(":", 1)[1])
    body = json.dumps({"x": [[1, 2, 3, 4]]}).encode()
    head = "POST /functions/rows HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(caplog.handler)  # uvicorn's loggers do not propagate to the root
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", port)) as raw:
                    raw.sendall(f"{head}Content-Length: {len(body) + 10}\r\n\r\n".encode() + body)
            # the server is still answering, and answered every hang-up without a word
            answer = httpx.post(f"{rows_server.url}/functions/rows", json={"x": [[1, 2, 3, 4]]})
            # let the hung-up requests finish on the server before reading the log: no handler left
            handlers = lambda: {c for c in _server_state(rows_server)[3] if "run_asgi" in c or "app" in c.lower()}  # noqa: E731
            assert wait_until(lambda: not handlers(), 30, 0.05), "the hung-up requests' handlers are still running"
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert answer.json() == {"total": [10.0]}
    assert [f"{r.name}: {r.getMessage()}" for r in caplog.records] == []


def test_batcher_follows_its_caller_to_a_new_event_loop(tmp_path: Path) -> None:
    """Adapters such as Mangum or Azure's AsgiMiddleware may run each request on a new loop."""
    from modelfn.codecs import Decoded
    from modelfn.function import ModelFunction
    from modelfn.spec import load_spec

    fn = ModelFunction(load_spec(function_folder(tmp_path, "rows", row_sum(4))))
    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher(fn, executor)
        for round_ in range(3):
            rows = np.full((1, 4), round_, dtype=np.float32)
            out = asyncio.run(batcher.submit(Decoded({"x": rows})))
            assert out["total"].tolist() == [4.0 * round_]
