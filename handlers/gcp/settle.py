"""The one outcome rule for Google's event deliveries, from `modelfn.events.retryable`: a
message that can never succeed is dropped (one WARNING line, a normal return that
acknowledges it); one that may pass on a later try raises `Retryable`, so the platform
delivers it again (deploy event functions with `--retry`; give subscriptions a dead-letter topic)."""

from __future__ import annotations

import logging
from typing import Any

from modelfn import events
from modelfn.errors import ModelfnError

log = logging.getLogger("modelfn.gcp")

Outcome = dict[str, Any]


def settle(exc: BaseException, what: str, function: str | None) -> Outcome:
    message = events.reason(exc)
    if events.retryable(exc):
        log.error("retrying %s for %s: %s", what, function, message)
        raise events.Retryable(f"{what}: {message}") from exc
    code = exc.code if isinstance(exc, ModelfnError) else "not_found"
    log.warning("dropped %s for %s: %s (%s; not retried)", what, function, message, code)
    return {"outcome": "dropped", "function": function, "reason": message, "code": code}


def retry(what: str, exc: BaseException) -> events.Retryable:
    """A delivery step (publishing, writing a result) failed: always worth another try."""
    log.error("retrying: %s failed: %s", what, exc)
    return events.Retryable(f"{what} failed: {exc}")
