"""One function as the Azure triggers see it: the registry that loads it once per worker
process, and the core `Service` under Azure's 100 MB HTTP request limit."""

from __future__ import annotations

from modelfn import observations
from modelfn.http import MB, api_key
from modelfn.registry import Registry
from modelfn.service import Service
from modelfn.spec import FunctionSpec

PLATFORM_MAX_BODY_BYTES = 100 * MB
"""Azure's front end refuses HTTP request bodies over 100 MB before the function runs."""


class ServedFunction:
    def __init__(self, spec: FunctionSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.registry = Registry([spec])
        self.service = Service(self.registry, key=api_key(), platform_limit_bytes=PLATFORM_MAX_BODY_BYTES)
        # a blob is not an HTTP body: no 100 MB cap, the function's own limit only
        self.objects = Service(self.registry)
        self.objects.monitor = self.service.monitor  # one cache and one drift window per function
        observations.subscribe(observations.log_recorder)  # per-version metrics as log lines
