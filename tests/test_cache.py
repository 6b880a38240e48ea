"""The prediction cache: one entry for the same decoded values whatever the route, bounded by
size and TTL, in-process on every provider, shared through a real `redis-server` on loopback
(the server and Lambda), and never failing or holding a prediction when Redis goes away."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from support.providers import azure_request, example_copy, lambda_http_event

from modelfn import cache as cache_module
from modelfn.cache import LocalCache, feeds_key, pack, unpack
from modelfn.registry import Registry
from modelfn.service import Service

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_MS = 100


def _row(i: int = 0) -> list[float]:
    line = (ROOT / "events" / "samples" / "breast-cancer.jsonl").read_text().splitlines()[i]
    return json.loads(line)["X"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("functions")
    example_copy(root, extra_toml=f"[cache]\nenabled = true\nsize = 64\ntimeout_ms = {TIMEOUT_MS}\n")
    return root


# -- in-process --------------------------------------------------------------------------


def test_the_json_route_and_the_inference_protocol_share_one_entry(functions: Path) -> None:
    from modelfn.http import HttpRequest

    service = Service(Registry.from_dir(functions))
    row = _row()
    simple = service.handle(HttpRequest("POST", "/functions/breast-cancer", {}, json.dumps({"X": row}).encode()))
    document = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 30], "data": row}]}
    oip = service.handle(HttpRequest("POST", "/v2/models/breast-cancer/infer", {}, json.dumps(document).encode()))
    assert simple.status == oip.status == 200
    assert service.monitor.caches["breast-cancer"].counts == {"hit": 1, "miss": 1, "error": 0}
    answer = json.loads(oip.encoded())
    probabilities = next(o for o in answer["outputs"] if o["name"] == "probabilities")["data"]
    assert probabilities == pytest.approx(np.asarray(simple.body["probabilities"]).ravel().tolist())


def test_keys_follow_values_dtype_and_shape() -> None:
    a = {"X": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert feeds_key(a) == feeds_key({"X": np.arange(6, dtype=np.float32).reshape(2, 3).copy()})
    assert feeds_key(a) != feeds_key({"X": a["X"].reshape(3, 2)})
    assert feeds_key(a) != feeds_key({"X": a["X"].astype(np.float64)})
    assert feeds_key(a) != feeds_key({"Y": a["X"]})
    outputs = {"label": np.array([1, 0]), "probabilities": np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)}
    back = unpack(pack(outputs))
    assert back.keys() == outputs.keys() and all(np.array_equal(back[k], outputs[k]) for k in outputs)
    assert back["probabilities"].dtype == np.float32


def test_the_local_cache_is_bounded_by_size_and_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    # the cache's clock, stepped by hand: a loaded machine may pause this test longer than a TTL
    now = [1000.0]
    monkeypatch.setattr(cache_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    local = LocalCache(size=2, ttl_s=0.2)
    for key in "abc":
        local.put(key, {"y": np.array([ord(key)])})
    assert len(local) == 2 and local.get("a") is None and local.get("c")["y"][0] == ord("c")  # type: ignore[index]
    now[0] += 0.19
    assert local.get("c") is not None
    now[0] += 0.02
    assert local.get("c") is None


def _lambda(body: bytes) -> int:
    from handlers import aws_lambda
    from handlers.local.aws import LocalContext

    return int(aws_lambda.handler(lambda_http_event("POST", "/", body), LocalContext("cache"))["statusCode"])


def _gcp(body: bytes) -> int:
    import flask

    from handlers import gcp_functions

    with flask.Flask(__name__).test_request_context(
        "/functions/breast-cancer", method="POST", headers={"content-type": "application/json"}, data=body
    ):
        return int(gcp_functions.serve_http(flask.request).status_code)


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_every_provider_answers_a_repeat_from_the_cache(
    provider: str, functions: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(functions))
    monkeypatch.setenv("MODELFN_FUNCTION", "breast-cancer")
    body = json.dumps({"X": _row(3)}).encode()
    if provider == "aws":
        from handlers.aws import app

        app.reset()
        try:
            assert _lambda(body) == _lambda(body) == 200
            service = app.current().service
        finally:
            app.reset()
    elif provider == "gcp":
        from handlers.gcp import instance

        monkeypatch.setattr(instance, "_services", {})
        assert _gcp(body) == _gcp(body) == 200
        service = instance.service()
    else:
        from handlers.az.http import serve
        from handlers.azure_functions import ServedFunction, resolve_spec

        served = ServedFunction(resolve_spec("breast-cancer"))
        for _ in range(2):
            assert serve(served, azure_request("POST", "functions/breast-cancer", body)).status_code == 200
        service = served.service
    assert service.monitor.caches["breast-cancer"].counts == {"hit": 1, "miss": 1, "error": 0}


# -- a real redis-server -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed and could not be (scripts/install-redis.sh)")
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(5)

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    pytest.importorskip("redis", reason="the shared cache needs the cache extra (pip install 'modelfn[cache]')")
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.mark.slow
def test_two_instances_share_answers_through_redis(
    functions: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELFN_CACHE_URL", redis_server.url)
    first, second = (Service(Registry.from_dir(functions)) for _ in range(2))
    payload = {"X": _row(5)}
    assert first.predict("breast-cancer", payload=payload) == second.predict("breast-cancer", payload=payload)
    assert first.monitor.caches["breast-cancer"].counts["miss"] == 1
    assert second.monitor.caches["breast-cancer"].counts == {"hit": 1, "miss": 0, "error": 0}
    keys = redis_server.client().keys("modelfn:breast-cancer:*")
    assert len(keys) == 1
    assert 0 < redis_server.client().pttl(keys[0]) <= 300_000


@pytest.mark.slow
def test_lambda_reads_the_shared_cache_and_reports_hits_as_emf(
    functions: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from support.aws import capture_telemetry

    from handlers.aws import app

    lines = capture_telemetry(monkeypatch)
    monkeypatch.setenv("MODELFN_CACHE_URL", redis_server.url)
    monkeypatch.setenv("MODELFN_FUNCTIONS_DIR", str(functions))
    monkeypatch.setenv("MODELFN_FUNCTION", "breast-cancer")
    body = json.dumps({"X": _row(7)}).encode()
    try:
        for _ in range(2):  # two cold instances: the second finds the first one's answer in Redis
            app.reset()
            assert _lambda(body) == 200
    finally:
        app.reset()
    documents = [d for d in lines() if "_aws" in d and "Invocations" in d]
    assert [d.get("CacheMisses") for d in documents] == [1, None]
    assert [d.get("CacheHits") for d in documents] == [None, 1]


@pytest.mark.slow
def test_the_server_keeps_answering_when_redis_dies_or_hangs_mid_load(
    functions: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from live_server import LiveServer

    from modelfn.asgi import create_app

    monkeypatch.setenv("MODELFN_CACHE_URL", redis_server.url)
    monkeypatch.setattr(cache_module, "RETRY_AFTER_S", 0.3)
    app = create_app(Registry.from_dir(functions))
    slowest = 0.0
    with LiveServer(app) as live, httpx.Client(base_url=live.url) as client:

        def predict(i: int) -> None:
            nonlocal slowest
            started = time.perf_counter()
            response = client.post("/functions/breast-cancer", json={"X": _row(i)})
            slowest = max(slowest, time.perf_counter() - started)
            assert response.status_code == 200, response.text

        for i in range(20):
            predict(i)
        assert len(redis_server.client().keys("modelfn:*")) == 20
        redis_server.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]  # hangs: every call times out
        for i in range(20, 40):
            predict(i)
        redis_server.stop()  # gone: connections refused
        time.sleep(0.35)
        for i in range(40, 60):
            predict(i)
        counts = app.service.monitor.caches["breast-cancer"].counts
        assert counts["error"] >= 2 and counts["miss"] + counts["error"] + counts["hit"] == 60
        # a hung cache costs at most its timeout per call, never the prediction
        assert slowest < 1.0
        back = RedisServer(redis_server.port).start()
        try:
            time.sleep(0.35)
            predict(60)  # stored in Redis again...
            app.service.monitor.caches["breast-cancer"].local = cache_module.LocalCache(64, 300)
            hits = counts["hit"]
            predict(60)  # ...and read back from it
            assert counts["hit"] == hits + 1
        finally:
            back.stop()


def test_cache_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFN_CACHE_URL", raising=False)
    service = Service(Registry.from_dir(ROOT / "functions", ["breast-cancer"]))
    service.predict("breast-cancer", payload={"X": _row()})
    assert service.monitor.caches == {}
