"""Which inputs one task of a parallel job scores: `--shard i/n`, or Cloud Run Jobs'
CLOUD_RUN_TASK_INDEX / CLOUD_RUN_TASK_COUNT. An input's shard is a stable hash of its name
alone, so it does not depend on the listing's order, on the other inputs, or on which inputs
are already done: every input lands in exactly one shard, and a failed shard reruns alone."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from modelfn.errors import BadRequest

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise BadRequest(f"shard {self.index}/{self.count}: the index runs from 0 to count - 1")

    def holds(self, name: str) -> bool:
        return shard_of(name, self.count) == self.index

    def select(self, items: Sequence[T], name_of: Callable[[T], str] = str) -> list[T]:
        """The items whose name (`name_of(item)`) falls in this shard, in their order."""
        return [item for item in items if self.holds(name_of(item))]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(name: str, count: int) -> int:
    """The shard of an input named `name` (its path below the input prefix) among `count`."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse(text: str) -> Shard:
    """`3/10` -> Shard(3, 10)."""
    index, _, count = text.partition("/")
    if index.strip().isdigit() and count.strip().isdigit():
        return Shard(int(index), int(count))
    raise BadRequest(f"--shard {text!r}: write INDEX/COUNT, e.g. 0/4 (the index runs from 0 to COUNT - 1)")


def from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The Cloud Run Job task's shard, None outside one (or in a job of one task)."""
    env = os.environ if environ is None else environ
    index, count = env.get("CLOUD_RUN_TASK_INDEX"), env.get("CLOUD_RUN_TASK_COUNT")
    if index is None or count is None:
        return None
    try:
        shard = Shard(int(index), int(count))
    except ValueError:
        raise BadRequest(f"CLOUD_RUN_TASK_INDEX={index!r}, CLOUD_RUN_TASK_COUNT={count!r}: not a shard") from None
    return shard if shard.count > 1 else None
