"""Small statistics every layer reports with (pure Python)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    # Interpolation can step a hair outside [ordered[low], ordered[high]] in floating point.
    return min(max(value, ordered[low]), ordered[high])


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank: the smallest value with at least q% of the values at or below
    it (what the simulators report; 0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]
