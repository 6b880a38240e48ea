"""Event rules, decided once for every storage and message trigger (S3, Cloud Storage, Azure
Blob; SQS, SNS, Pub/Sub, Azure Queue): what a stored object's content type is, how its
result is named, which objects are our own results, whether a failure is worth retrying,
how the failures of a batch are collected, and how a result is encoded. Adapters only
translate their platform's event into these calls."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from modelfn.codecs import media_type
from modelfn.errors import ModelfnError, ModelUnavailable
from modelfn.http import json_text

log = logging.getLogger("modelfn")
T = TypeVar("T")

OUTPUT_MARK = "modelfn-function"
"""Metadata on every result object (its value: the function that wrote it). An object that
carries it is never predicted again, wherever it was written."""
RESULT_SUFFIX = ".json"
GENERIC_TYPES = frozenset({"", "binary/octet-stream", "application/octet-stream"})
EXTENSION_TYPES = {
    ".json": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
    ".txt": "text/plain",
}
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)


class Retryable(ModelfnError):
    """Raised out of an event handler so the platform delivers the event again."""

    status = 503
    code = "retry"


class BatchFailed(Exception):
    """Some items of an event failed; every other item was done, and these are named."""


def content_type(name: str | None, declared: str | None = None, data: bytes | None = None) -> str | None:
    """What a stored object holds: its declared type when that says something (uploads
    without one arrive as binary/octet-stream), else its name's extension, else its first
    bytes, else None (the function's codec then decides: JSON by default)."""
    kind = media_type(declared)
    if kind not in GENERIC_TYPES:
        return declared
    dot = (name or "").rfind(".")
    by_extension = EXTENSION_TYPES.get((name or "")[dot:].lower()) if dot >= 0 else None
    if by_extension:
        return by_extension
    if data is not None:
        for magic, sniffed in MAGIC:
            if data.startswith(magic):
                return sniffed
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return "image/webp"
        if data.lstrip()[:1] in (b"{", b"[", b'"'):
            return "application/json"
    return None


def result_name(name: str, prefix: str, output_prefix: str) -> str:
    """`incoming/a/b.png` -> `predictions/a/b.png.json`: the path below the input prefix is
    kept, so results are predictable and two inputs never share one."""
    relative = name[len(prefix) :] if prefix and name.startswith(prefix) else name
    return f"{output_prefix}{relative}{RESULT_SUFFIX}"


def skip_reason(
    name: str,
    *,
    prefix: str = "",
    output_prefix: str = "",
    metadata: dict[str, str] | None = None,
    same_place: bool = True,
) -> str | None:
    """Why an object is not a request, or None. The output prefix first, so a result can
    never trigger another prediction; `same_place`: results go to the object's own bucket."""
    if same_place and output_prefix and name.startswith(output_prefix):
        return f"under the output prefix {output_prefix!r} (a result, not a request)"
    if metadata and OUTPUT_MARK in metadata:
        return f"a result written by {metadata[OUTPUT_MARK]!r}"
    if prefix and not name.startswith(prefix):
        return f"outside the input prefix {prefix!r}"
    if name.endswith("/"):
        return "a folder placeholder"
    return None


def retryable(exc: BaseException) -> bool:
    """Whether another try may succeed. The model not loading yet, a store or queue that
    failed, anything unexpected: yes. A request the model refuses, or an object that is
    gone: no, another try gives the same answer."""
    if isinstance(exc, ModelUnavailable | Retryable):
        return True
    if isinstance(exc, ModelfnError):
        return False
    return not isinstance(exc, LookupError) and type(exc).__name__ not in ("NotFound", "NoSuchKey")


def reason(exc: BaseException) -> str:
    """What went wrong with one item, for its log line and the error naming it."""
    return exc.message if isinstance(exc, ModelfnError) else f"{type(exc).__name__}: {exc}"


def encode_result(result: Any) -> bytes:
    """A result as it is stored or sent on: the same JSON as the HTTP answer."""
    return json_text(result).encode()


class Batch:
    """The items of one event (objects, messages): each runs even when another fails, and
    the failures are named at the end so the platform retries or dead-letters the event
    with nothing lost."""

    def __init__(self, noun: str, total: int, error: type[BatchFailed] = BatchFailed) -> None:
        self.noun = noun
        self.total = total
        self.error = error
        self.failed: list[tuple[str, str]] = []

    def run(self, item: str, work: Callable[[], T], on_error: Callable[[str, str], None] | None = None) -> T | None:
        try:
            return work()
        except Exception as exc:  # one item's failure must not lose the others
            why = reason(exc)
            self.failed.append((item, why))
            (on_error or _log_failure)(item, why)
            return None

    def raise_if_failed(self) -> None:
        if self.failed:
            named = "; ".join(f"{item} ({why})" for item, why in self.failed)
            raise self.error(f"{len(self.failed)} of {self.total} {self.noun}(s) failed: {named}")


def _log_failure(item: str, why: str) -> None:
    log.error("%s failed: %s", item, why)
