"""Pure label logic (no torch): max over samples, bucketing, label statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from seqsched.stats import percentile

PAPER_BUCKET = 50
"""The paper rounds the max length up to a multiple of 50."""


def max_length(lengths: Sequence[int]) -> int:
    """The label's raw value: the longest of an instruction's sampled responses."""
    if not lengths:
        raise ValueError("an instruction needs at least one sampled length")
    if any(length < 0 for length in lengths):
        raise ValueError(f"lengths must be >= 0, got {list(lengths)}")
    return max(lengths)


def bucket_up(length: int, bucket: int = PAPER_BUCKET) -> int:
    """Round a length up to a multiple of bucket (1..50 -> 50, 51..100 -> 100); 0 goes to the first bucket."""
    if bucket < 1:
        raise ValueError(f"bucket must be >= 1, got {bucket}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    return max(1, math.ceil(length / bucket)) * bucket


def label(lengths: Sequence[int], bucket: int = PAPER_BUCKET) -> int:
    """The paper's label: the max length over samples, rounded up to a bucket."""
    return bucket_up(max_length(lengths), bucket)


@dataclass(frozen=True)
class Summary:
    """Count, mean and the usual percentiles of some numbers."""

    count: int
    mean: float
    median: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """The summary of values (at least one)."""
        if not values:
            raise ValueError("a summary needs at least one value")
        return cls(
            count=len(values),
            mean=min(max(math.fsum(values) / len(values), min(values)), max(values)),
            median=percentile(values, 50),
            p90=percentile(values, 90),
            p99=percentile(values, 99),
            max=max(values),
        )


@dataclass(frozen=True)
class LabelStats:
    """What a length dataset looks like: label sizes, how often the cap was hit, how far samples spread."""

    count: int
    max_length: Summary
    """The per-instruction max over samples (before bucketing)."""
    label: Summary
    """The bucketed labels predictors train on."""
    at_limit_share: float
    """Share of instructions with a sample that hit the cap (its true length is unknown, >= the cap)."""
    greedy_length: Summary | None
    spread: Summary | None
    """max - greedy per instruction: how much a single greedy sample under-states the label."""
    max_above_greedy_share: float | None
    """Share of instructions where some sample ran longer than the greedy one."""


def label_stats(
    max_lengths: Sequence[int],
    labels: Sequence[int],
    hit_limit: Sequence[bool],
    greedy_lengths: Sequence[int | None] | None = None,
) -> LabelStats:
    """Statistics of one split; greedy-based figures only over instructions that have a greedy sample."""
    if not max_lengths:
        raise ValueError("statistics of an empty split")
    if not len(max_lengths) == len(labels) == len(hit_limit):
        raise ValueError("max_lengths, labels and hit_limit must have one entry per instruction")
    pairs: list[tuple[int, int]] = []
    if greedy_lengths is not None:
        if len(greedy_lengths) != len(max_lengths):
            raise ValueError("greedy_lengths must have one entry per instruction")
        pairs = [(top, greedy) for top, greedy in zip(max_lengths, greedy_lengths, strict=True) if greedy is not None]
    if any(greedy > top for top, greedy in pairs):
        raise ValueError("a greedy length exceeds its instruction's max length")
    spreads = [top - greedy for top, greedy in pairs]
    return LabelStats(
        count=len(max_lengths),
        max_length=Summary.of(max_lengths),
        label=Summary.of(labels),
        at_limit_share=sum(map(bool, hit_limit)) / len(hit_limit),
        greedy_length=Summary.of([greedy for _, greedy in pairs]) if pairs else None,
        spread=Summary.of(spreads) if spreads else None,
        max_above_greedy_share=sum(spread > 0 for spread in spreads) / len(spreads) if spreads else None,
    )
