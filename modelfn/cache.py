"""The prediction cache (`[cache]`, off by default): a function's outputs kept by a hash of
its decoded input tensors, in this process (LRU, size- and TTL-bounded) and, when a Redis
URL is set, shared across instances through the Redis protocol (ElastiCache/Valkey,
Memorystore, Azure Cache for Redis).

The key is the function, its model's digest and a hash of the decoded feeds (name, dtype,
shape, bytes): the same values reach the same entry whether they came as `{"X": [...]}`, an
Open Inference Protocol request or its binary extension, and a new model never reads an
old model's answers. Outputs are cached, not responses: each route encodes them its own way.

A shared cache never fails a prediction and never holds it longer than `timeout_ms`: any
error or timeout counts as a miss, and after one the shared tier is left alone for
`RETRY_AFTER_S` so a dead cache costs one timeout, not one per request."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from modelfn.spec import CacheSpec

log = logging.getLogger("modelfn")

Arrays = dict[str, np.ndarray]
RETRY_AFTER_S = 5.0
URL_VARIABLE = "MODELFN_CACHE_URL"


def model_digest(path: Path, pinned: str | None = None) -> str:
    """The model's identity in keys: its pinned sha256, else a hash of the file (once, at first use)."""
    if pinned:
        return pinned[:32].lower()
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def feeds_key(feeds: Arrays) -> str:
    """A hash of the decoded input tensors: names, dtypes, shapes and values."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(feeds):
        value = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.data)
    return digest.hexdigest()


def pack(outputs: Arrays) -> bytes:
    """Outputs as bytes for Redis: a JSON line naming each array's dtype and shape, then their bytes."""
    arrays = [(name, np.ascontiguousarray(v)) for name, v in outputs.items()]
    head = json.dumps([[name, v.dtype.str, list(v.shape)] for name, v in arrays]).encode()
    return b"".join([head, b"\n", *(v.tobytes() for _, v in arrays)])


def unpack(data: bytes) -> Arrays:
    head, _, body = data.partition(b"\n")
    outputs, offset = {}, 0
    for name, dtype, shape in json.loads(head):
        kind = np.dtype(dtype)
        size = kind.itemsize * int(np.prod(shape, dtype=np.int64))
        outputs[name] = np.frombuffer(body, kind, count=size // kind.itemsize, offset=offset).reshape(shape).copy()
        offset += size
    return outputs


class LocalCache:
    """Least recently used entries, each with its expiry; safe across threads."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[float, Arrays]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Arrays | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return {k: v.copy() for k, v in entry[1].items()}

    def put(self, key: str, outputs: Arrays) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic() + self.ttl_s, {k: np.array(v) for k, v in outputs.items()})
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class SharedCache:
    """Redis through redis-py, with timeouts on connect and on every call, and no retries."""

    def __init__(self, url: str, ttl_s: float, timeout_ms: float) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        seconds = timeout_ms / 1000
        self.client = redis.Redis.from_url(
            url, socket_timeout=seconds, socket_connect_timeout=seconds, retry=Retry(NoBackoff(), 0)
        )
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.ttl_ms = int(ttl_s * 1000)
        self.down_until = 0.0

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until

    def get(self, key: str) -> bytes | None:
        return self.client.get(key)  # type: ignore[return-value]  # bytes: the client does not decode

    def put(self, key: str, data: bytes) -> None:
        self.client.set(key, data, px=self.ttl_ms)

    def failed(self, exc: BaseException) -> None:
        if self.up:
            log.warning("shared cache unavailable, predicting without it for %.0f s: %s", RETRY_AFTER_S, exc)
        self.down_until = time.monotonic() + RETRY_AFTER_S


class PredictionCache:
    """One function's cache: the local tier first, then the shared one; `counts` by outcome."""

    def __init__(self, function: str, digest: str, spec: CacheSpec, url: str | None = None) -> None:
        self.prefix = f"modelfn:{function}:{digest}:"
        self.local = LocalCache(spec.size, spec.ttl_s)
        self.max_bytes = int(spec.max_entry_kb * 1024)
        url = url if url is not None else (os.environ.get(URL_VARIABLE) or spec.url)
        self.shared: SharedCache | None = None
        if url:
            try:
                self.shared = SharedCache(url, spec.ttl_s, spec.timeout_ms)
            except ImportError:
                log.warning("%s: a shared cache URL is set but redis-py is not installed (the cache extra)", function)
        self.counts = {"hit": 0, "miss": 0, "error": 0}

    def key(self, feeds: Arrays) -> str:
        return self.prefix + feeds_key(feeds)

    def get(self, key: str) -> tuple[Arrays | None, str]:
        """The cached outputs, and the outcome: `hit`, `miss`, or `error` (the shared tier failed: a miss)."""
        outputs = self.local.get(key)
        if outputs is not None:
            return self._counted(outputs, "hit")
        shared = self.shared
        if shared is None or not shared.up:
            return self._counted(None, "miss")
        try:
            data = shared.get(key)
        except shared.errors as exc:
            shared.failed(exc)
            return self._counted(None, "error")
        if data is None:
            return self._counted(None, "miss")
        outputs = unpack(data)
        self.local.put(key, outputs)
        return self._counted(outputs, "hit")

    def put(self, key: str, outputs: Arrays) -> None:
        if sum(v.nbytes for v in outputs.values()) > self.max_bytes:
            return
        self.local.put(key, outputs)
        shared = self.shared
        if shared is None or not shared.up:
            return
        try:
            shared.put(key, pack(outputs))
        except shared.errors as exc:
            shared.failed(exc)

    def _counted(self, outputs: Arrays | None, outcome: str) -> tuple[Arrays | None, str]:
        self.counts[outcome] += 1
        return outputs, outcome
