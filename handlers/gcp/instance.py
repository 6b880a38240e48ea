"""What one Cloud Functions instance serves: the registry of functions under
$MODELFN_FUNCTIONS_DIR (or the one $MODELFN_FUNCTION names) behind the core `Service`,
under the platform's 32 MB request limit, and the Google clients, created on first use."""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

from modelfn import observations
from modelfn.errors import NotFound
from modelfn.http import MB, api_key
from modelfn.registry import Registry, served_function
from modelfn.service import Service
from modelfn.spec import FunctionSpec

PLATFORM_MAX_BODY_BYTES = 32 * MB
"""Cloud Functions refuses larger HTTP bodies before the function runs."""

_lock = threading.Lock()
_services: dict[tuple[str | None, str | None], Service] = {}


def service() -> Service:
    """The Service for this configuration, built once (specs only; models load on first use)."""
    key = (os.environ.get("MODELFN_FUNCTIONS_DIR"), os.environ.get("MODELFN_FUNCTION"))
    with _lock:
        if key not in _services:
            registry = Registry.from_dir(names=[key[1]] if key[1] else None)
            _services[key] = Service(registry, key=api_key(), platform_limit_bytes=PLATFORM_MAX_BODY_BYTES)
            if os.environ.get("MODELFN_SHADOW_TOPIC"):  # the shadow runs in a function of its own
                from handlers.gcp.shadow import PubSubShadowSink

                _services[key].shadow_sink = PubSubShadowSink(os.environ["MODELFN_SHADOW_TOPIC"])
            observations.subscribe(observations.log_recorder)  # per-version metrics as log lines
        return _services[key]


def target_function(requested: str | None = None) -> str:
    """Which model function an event is for: the one it names, $MODELFN_FUNCTION, or the only one."""
    names = sorted(service().registry.specs)
    name = served_function(names, requested)
    if name is None:
        raise NotFound(f"cannot tell which function this event is for among {names}: set MODELFN_FUNCTION")
    return name


def spec(name: str) -> FunctionSpec:
    specs = service().registry.specs
    if name not in specs:
        raise NotFound(f"unknown function {name!r}; this instance has {sorted(specs)}")
    return specs[name]


def project(*paths: str | None) -> str | None:
    """The project from a `projects/P/...` resource name, else the environment."""
    for path in paths:
        parts = (path or "").split("/")
        if "projects" in parts and parts.index("projects") + 1 < len(parts):
            return parts[parts.index("projects") + 1]
    return os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCP_PROJECT")


def publisher() -> Any:
    return _publisher(os.environ.get("PUBSUB_EMULATOR_HOST"))


def storage() -> Any:
    return _storage(os.environ.get("STORAGE_EMULATOR_HOST"))


@functools.cache
def _publisher(emulator: str | None) -> Any:
    from google.cloud import pubsub_v1  # only the publishing path pays for gRPC

    return pubsub_v1.PublisherClient()


@functools.cache
def _storage(emulator: str | None) -> Any:
    from google.cloud import storage  # type: ignore[attr-defined,unused-ignore]

    return storage.Client()
