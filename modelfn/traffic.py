"""A function's model versions and the traffic between them: which version answers a request
(by weight, or sticky by a key the caller sends), which one gets a shadow copy, and what is
recorded of each answer. The Service asks here; it never decides a version itself."""

from __future__ import annotations

import bisect
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from modelfn.agreement import compare
from modelfn.errors import NotFound
from modelfn.function import ModelFunction, Outputs
from modelfn.observations import DROPPED, Observation, record
from modelfn.sources import Progress
from modelfn.spec import FunctionSpec, ModelSpec

log = logging.getLogger("modelfn")

KEY_HEADER = "x-modelfn-key"
"""The caller's sticky key: one key always lands on one version while the weights stay."""
VERSION_HEADER = "x-modelfn-version"
"""The version that answered, on every answer of a function that declares versions."""
KEY_ATTRIBUTE = "modelfn-key"
"""The message attribute (SQS, SNS, Pub/Sub) that carries the sticky key of an event."""
PINNED: dict[str, str] = {}
"""function -> the one version that answers everything, no split and no shadow: set by
`modelfn invoke --version` before the function loads; never set in a deployment."""


def version_spec(spec: FunctionSpec, version: str) -> FunctionSpec:
    """The spec one version loads with: its own source, pin and (if it has one) `[io]`."""
    if version == spec.model.version:
        return spec
    declared = spec.model.versions[version]
    model = ModelSpec(source=declared.source, sha256=declared.sha256, version=version)
    return dataclasses.replace(spec, model=model, io=declared.io or spec.io)


def position(function: str, key: str) -> float:
    """Where a key falls in [0, 1): the same key always falls in the same place for a function,
    and keys spread evenly, so a share of keys equal to a version's weight lands on it."""
    import hashlib  # here: OpenSSL's hashing is ~4 ms of a cold start a one-model function never needs

    digest = hashlib.blake2b(f"{function}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Versions:
    """Every version of one function, loaded (each its own session), and its `[traffic]`."""

    def __init__(self, spec: FunctionSpec, default: ModelFunction, progress: Progress | None = None) -> None:
        self.name = spec.name
        self.default = spec.model.version
        self.functions: dict[str, ModelFunction] = {self.default: default}
        for version in spec.model.versions:
            self.functions[version] = ModelFunction(version_spec(spec, version), progress)
        weights = {v: w for v, w in (spec.traffic.weights or {self.default: 1.0}).items() if w > 0}
        total = sum(weights.values())
        self.weights = {v: w / total for v, w in weights.items()}
        self._live = list(self.weights)
        self._bounds: list[float] = []
        running = 0.0
        for version in self._live:
            running += self.weights[version]
            self._bounds.append(running)
        self.shadow = self.functions[spec.traffic.shadow] if spec.traffic.shadow else None
        self.sample = spec.traffic.shadow_sample
        pinned = PINNED.get(spec.name)
        if pinned is not None:
            self.get(pinned)  # an unknown version is a 404 naming the versions
            self._live, self._bounds, self.weights, self.shadow = [pinned], [1.0], {pinned: 1.0}, None
        self.versioned = len(self.functions) > 1
        """False for a function with one model: it answers exactly as it did before versions existed."""

    @property
    def names(self) -> list[str]:
        return list(self.functions)

    def get(self, version: str) -> ModelFunction:
        fn = self.functions.get(version)
        if fn is None:
            raise NotFound(
                f"function {self.name!r} has no version {version!r}; it has {self.names}", function=self.name
            )
        return fn

    def choose(self, key: str | None = None) -> ModelFunction:
        """The live version for one request: by the key's hash when one is sent, else at random,
        in both cases in proportion to the weights."""
        if len(self._live) == 1:
            return self.functions[self._live[0]]
        import random

        point = position(self.name, key) if key else random.random()
        index = min(bisect.bisect_right(self._bounds, point), len(self._live) - 1)
        return self.functions[self._live[index]]

    def shadowing(self, live: ModelFunction) -> ModelFunction | None:
        """The shadow version, for the sampled share of requests (never the version answering)."""
        shadow = self.shadow
        if shadow is None or shadow is live:
            return None
        import random

        if self.sample < 1 and random.random() >= self.sample:
            return None
        return shadow

    def policy(self) -> dict[str, Any]:
        shadow = self.shadow.version if self.shadow is not None else None
        return {"default": self.default, "weights": self.weights, "shadow": shadow, "shadow_sample": self.sample}


class Serving:
    """One request's trip: the version answering it, when it started, and the shadow copy
    (sampled or not). `finish` records the live answer; `shadow_run` the shadow's."""

    __slots__ = ("fn", "shadow", "started", "versioned")

    def __init__(self, versions: Versions, fn: ModelFunction, shadow: bool = True) -> None:
        self.fn = fn
        self.versioned = versions.versioned
        self.shadow = versions.shadowing(fn) if shadow else None
        self.started = time.perf_counter()

    @property
    def version(self) -> str:
        return self.fn.version

    def finish(self, status: int, headers: dict[str, str] | None = None) -> None:
        """Record the live answer; name its version in `headers` for a versioned function."""
        ms = (time.perf_counter() - self.started) * 1000
        if headers is not None and self.versioned:
            headers[VERSION_HEADER] = self.fn.version
        record(Observation(self.fn.name, self.fn.version, "live", ms, status, self.versioned))

    def shadow_run(self, decode: Callable[[ModelFunction], dict[str, Any]], live: Outputs) -> None:
        """Decode the same request for the shadow, run it, compare it with the live outputs and
        record all of it; whatever the shadow does, nothing reaches the caller."""
        if self.shadow is not None:
            run_shadow(self.shadow, decode, live)


def run_shadow(shadow: ModelFunction, decode: Callable[[ModelFunction], dict[str, Any]], live: Outputs) -> None:
    """The shadow version reads the request (`decode`), runs, and its agreement with the live
    outputs or its failure is recorded; nothing is raised."""
    started = time.perf_counter()
    try:
        outputs = shadow.run(decode(shadow))
    except Exception as exc:
        shadow_failed(shadow, exc, started)
        return
    shadow_done(shadow, live, outputs, started)


def shadow_done(shadow: ModelFunction, live: Outputs, outputs: Outputs, started: float) -> None:
    ms = (time.perf_counter() - started) * 1000
    try:
        agreement = compare(live, outputs)
    except Exception as exc:  # outputs of another shape than the live ones: recorded, never raised
        shadow_failed(shadow, exc, started)
        return
    record(Observation(shadow.name, shadow.version, "shadow", ms, 200, True, agreement))


def shadow_failed(shadow: ModelFunction, exc: BaseException, started: float) -> None:
    from modelfn.errors import error_body

    ms = (time.perf_counter() - started) * 1000
    status, _ = error_body(exc)
    log.warning("shadow version %s of %s failed (%s): %s", shadow.version, shadow.name, status, _reason(exc))
    record(Observation(shadow.name, shadow.version, "shadow", ms, status, True))


def shadow_dropped(function: str, version: str) -> None:
    """A copy not run: the async driver's queue of copies is full, or a provider's sink could
    not send it to the shadow's own invocation."""
    record(Observation(function, version, "shadow", 0.0, DROPPED, True))


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc or type(exc).__name__)[:300]


def header_key(headers: dict[str, str]) -> str | None:
    return headers.get(KEY_HEADER) or None
