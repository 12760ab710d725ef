"""Pure data-parallel helpers: split requests across processes by predicted work, gather in input order."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def shard_by_predicted_tokens(predicted: Sequence[int], shards: int) -> list[list[int]]:
    """Split request indices into `shards` groups of about equal total predicted tokens.

    Longest-processing-time-first: requests in decreasing predicted length go to the currently lightest
    shard. Within a shard, indices stay in input order. Balancing tokens (not counts) keeps every process
    busy for about the same time, so the slowest process does not hold the whole run back.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if any(length < 0 for length in predicted):
        raise ValueError("predicted lengths must be >= 0")
    heap = [(0, shard) for shard in range(shards)]
    groups: list[list[int]] = [[] for _ in range(shards)]
    # +1 so that zero-length predictions still spread across shards instead of piling on one.
    for index in sorted(range(len(predicted)), key=lambda i: (-predicted[i], i)):
        load, shard = heapq.heappop(heap)
        groups[shard].append(index)
        heapq.heappush(heap, (load + predicted[index] + 1, shard))
    return [sorted(group) for group in groups]


def shard_loads(predicted: Sequence[int], groups: Sequence[Sequence[int]]) -> list[int]:
    """Total predicted tokens per shard."""
    return [sum(predicted[index] for index in group) for group in groups]


def gather_in_order(groups: Sequence[Sequence[int]], results: Sequence[Sequence[T]], total: int) -> list[T]:
    """Put each shard's results (in its own index order) back into input order; every index exactly once."""
    ordered: list[T | None] = [None] * total
    seen = 0
    for group, shard_results in zip(groups, results, strict=True):
        if len(group) != len(shard_results):
            raise ValueError("a shard returned a different number of results than it was given")
        for index, result in zip(group, shard_results, strict=True):
            if ordered[index] is not None:
                raise ValueError(f"request {index} was returned by two shards")
            ordered[index] = result
            seen += 1
    if seen != total:
        raise ValueError(f"gathered {seen} results for {total} requests")
    return ordered  # type: ignore[return-value]
