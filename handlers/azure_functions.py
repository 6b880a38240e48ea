"""Azure Functions on the Python v2 programming model: `build_app()` turns one
`function.toml` into a `FunctionApp` with the triggers it declares: HTTP (the routes, JSON
and status codes of every provider, through the core `Service`), Blob and Queue, each one
module of `handlers/az/`. A deployed `function_app.py` is two lines:

    from handlers.azure_functions import build_app
    app = build_app("breast-cancer")

Running it here, without the Functions host, is `handlers.local.azure`."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# The worker indexes the app's decorators at start-up, so this import cannot be lazy.
import azure.functions as func
from azure.functions.decorators.function_app import Function

from handlers.az import blob, http, queue, shadow
from handlers.az.blob import blob_bindings, output_blob_path  # noqa: F401  (part of this module's surface)
from handlers.az.served import ServedFunction
from modelfn.errors import NotFound, SpecError
from modelfn.registry import served_function
from modelfn.spec import BlobTrigger, FunctionSpec, HttpTrigger, QueueTrigger, discover, functions_dir, load_spec

log = logging.getLogger("modelfn")

App = func.FunctionApp | func.AsgiFunctionApp

# trigger -> (its default table, how it registers); a new trigger is one more entry
TRIGGERS: dict[str, tuple[Callable[[], Any], Callable[..., None]]] = {
    "http": (HttpTrigger, http.register),
    "blob": (BlobTrigger, blob.register),
    "queue": (QueueTrigger, queue.register),
}
HTTP_MODES = ("direct", "asgi")


def resolve_spec(function_name: str | None = None, root: Path | None = None) -> FunctionSpec:
    """The function to serve: the argument, else `$MODELFN_FUNCTION`, else the only one there is."""
    found = discover(root or functions_dir())
    name = served_function(found, function_name)
    if name is None:
        raise SpecError(f"set MODELFN_FUNCTION to one of {sorted(found)} (or pass build_app(name))")
    if name not in found:
        raise NotFound(f"no function named {name!r} under {root or functions_dir()}; found {sorted(found)}")
    return load_spec(found[name])


def with_triggers(spec: FunctionSpec, kinds: Iterable[str]) -> FunctionSpec:
    """The spec with each trigger in `kinds` switched on at its defaults where the spec has none."""
    added = {k: TRIGGERS[k][0]() for k in kinds if getattr(spec.triggers, k) is None}
    if not added:
        return spec
    log.warning(
        "%s declares no [triggers.%s]; running it with the defaults here (a deployed app registers only the "
        "triggers function.toml declares)",
        spec.name,
        "], [triggers.".join(added),
    )
    return dataclasses.replace(spec, triggers=dataclasses.replace(spec.triggers, **added))


def function_id(spec: FunctionSpec, trigger: str) -> str:
    return f"{spec.name.replace('-', '_')}_{trigger}"


def trigger_type(function: Function) -> str:
    trigger = function.get_trigger()
    assert trigger is not None, "the library refuses to build a function without a trigger"
    return str(trigger.type).removesuffix("Trigger")


def build_app(
    function_name: str | None = None,
    *,
    root: Path | None = None,
    http_mode: str | None = None,
    enable: Iterable[str] = (),
    preload: bool = True,
) -> App:
    """The `FunctionApp` for one function, with the triggers its `function.toml` declares
    (plus `enable`, at their defaults). The model loads here, once per worker process, unless
    `preload` is false; a model that fails to load is reported by readiness, not at indexing.

    `http_mode` (else `$MODELFN_AZURE_HTTP`): `direct` (default) calls the Service from the
    trigger; `asgi` serves the core's ASGI server through `AsgiMiddleware`."""
    spec = with_triggers(resolve_spec(function_name, root), enable)
    declared = {kind: getattr(spec.triggers, kind) for kind in TRIGGERS if getattr(spec.triggers, kind) is not None}
    if not declared:
        raise SpecError(f"{spec.name}: no trigger Azure Functions serves; declare one of {', '.join(TRIGGERS)}")
    mode = http_mode or os.environ.get("MODELFN_AZURE_HTTP", "direct")
    if mode not in HTTP_MODES:
        raise SpecError(f"MODELFN_AZURE_HTTP={mode!r}: expected one of {HTTP_MODES}")
    served = ServedFunction(spec)
    if preload:
        served.registry.load_all()
    app: App
    if "http" in declared and mode == "asgi":
        app = http.asgi_app(served, declared.pop("http"), function_id(spec, "http"), preload)
    else:
        app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    for kind, trigger in declared.items():
        TRIGGERS[kind][1](app, served, trigger, function_id(spec, kind))
    shadow.add_shadow(app, served, function_id(spec, "shadow"))  # MODELFN_SHADOW_QUEUE: a queue of its own
    return app
