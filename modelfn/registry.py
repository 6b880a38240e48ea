"""The functions a process serves: discovered from `function.toml` files, loaded once,
with the reason kept when one fails to load so readiness can report it."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from modelfn.errors import ModelfnError, ModelUnavailable, NotFound
from modelfn.function import ModelFunction
from modelfn.sources import Progress, cache_dir, public_message, redact
from modelfn.spec import FunctionSpec, discover, load_spec
from modelfn.traffic import Versions

log = logging.getLogger("modelfn")


class Registry:
    def __init__(self, specs: list[FunctionSpec], progress: Progress | None = None) -> None:
        self.specs = {s.name: s for s in specs}
        self.loaded: dict[str, ModelFunction] = {}
        self.failed: dict[str, ModelfnError] = {}
        self.versions: dict[str, Versions] = {}
        """Each loaded function's versions (one for most) and its traffic policy."""
        self.progress = progress

    @classmethod
    def from_dir(
        cls, root: Path | None = None, names: list[str] | None = None, progress: Progress | None = None
    ) -> Registry:
        found = discover(root)
        if names:
            unknown = sorted(set(names) - set(found))
            if unknown:
                raise NotFound(f"no function named {unknown} under {root or 'functions/'}; found {sorted(found)}")
            found = {n: found[n] for n in names}
        return cls([load_spec(path) for path in found.values()], progress)

    def load(self, name: str) -> ModelFunction:
        if name not in self.specs:
            raise NotFound(f"unknown function {name!r}; this server has {sorted(self.specs)}", function=name)
        if name in self.loaded:
            return self.loaded[name]
        if name in self.failed:
            raise self.failed[name]
        try:
            fn = ModelFunction(self.specs[name], self.progress)
            self.versions[name] = Versions(self.specs[name], fn, self.progress)
        except ModelfnError as exc:
            # no credentials or query strings anywhere; the log keeps this server's paths, clients do not see them
            log.error("function %s failed to load: %s", name, redact(exc.message))
            reason = public_message(exc.message, self.specs[name].folder, cache_dir())
            self.failed[name] = ModelUnavailable(f"function {name!r} is not available: {reason}", function=name)
            raise self.failed[name] from None
        self.loaded[name] = fn
        log.info("loaded %s in %.0f ms on %s", name, fn.load_seconds * 1000, fn.providers[0])
        return fn

    get = load

    def traffic(self, name: str) -> Versions:
        """The loaded versions of `name` and the policy that picks one per request."""
        self.load(name)
        return self.versions[name]

    def load_all(self) -> None:
        for name in self.specs:
            with contextlib.suppress(ModelfnError):  # kept in self.failed for readiness
                self.load(name)

    def ready(self, name: str | None = None) -> bool:
        names = [name] if name else list(self.specs)
        return all(n in self.loaded for n in names)


def served_function(available: Iterable[str], requested: str | None = None) -> str | None:
    """The function a deployment serves, decided once for every provider: the one asked
    for, else $MODELFN_FUNCTION, else the only one there is; None when there are several and
    none is named (an HTTP deployment of several functions, where the route says which)."""
    name = requested or os.environ.get("MODELFN_FUNCTION") or None
    if name is not None:
        return name
    names = list(available)
    return names[0] if len(names) == 1 else None
