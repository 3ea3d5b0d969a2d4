"""Per-item work split across the pods of an Indexed Job, and put back together.

A stage whose work is per item gives pod `index` of `count` the items `items[index::count]`; each shard
writes its own outputs (one writer per object), and the merge interleaves the shards' per-item lists back
into the order of the unsharded list, so a merged result is the one an unsharded run would have produced.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

from .errors import InvalidArgument

T = TypeVar("T")


def check_shard(index: int, count: int) -> None:
    if count < 1 or not 0 <= index < count:
        raise InvalidArgument(f"shard index {index} is not in [0, {count})")


def share(items: Sequence[T], index: int, count: int) -> list[T]:
    """Every `count`-th item starting at `index`: the share of one pod of an Indexed Job."""
    check_shard(index, count)
    return list(items[index::count])


def interleave(parts: Sequence[Sequence[T]]) -> list[T]:
    """The inverse of `share` over all shards: parts[i] = share(items, i, len(parts)) -> items."""
    count = len(parts)
    total = sum(len(p) for p in parts)
    for i, part in enumerate(parts):
        expected = len(range(i, total, count))
        if len(part) != expected:
            raise InvalidArgument(f"shard {i} of {count} holds {len(part)} items, expected {expected} of {total}: "
                                  "the shards did not split the same list")
    return [parts[k % count][k // count] for k in range(total)]


def shard_spec(spec: dict, index: int, count: int) -> dict:
    """A job spec narrowed to one shard (the fields every per-item handler reads, see `shard_of`)."""
    check_shard(index, count)
    return {**spec, "shard_index": index, "shard_count": count}


def shard_of(spec: dict) -> tuple[int, int] | None:
    """(index, count) of a shard spec, None for a whole (unsharded) one."""
    if not spec.get("shard_count"):
        return None
    index, count = int(spec.get("shard_index") or 0), int(spec["shard_count"])
    check_shard(index, count)
    return index, count


def shard_name(index: int, count: int) -> str:
    return f"{index:05d}-of-{count:05d}"
