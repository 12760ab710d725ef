"""Pure label logic (no torch): max over samples, bucketing, label statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
