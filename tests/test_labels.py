"""Pure label logic: bucketing, max over samples, percentiles and label statistics (property tests)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from data_tools.labels import Summary, bucket_up, label, label_stats, max_length, percentile

lengths = st.integers(min_value=0, max_value=5000)
buckets = st.integers(min_value=1, max_value=512)
samples = st.lists(lengths, min_size=1, max_size=8)


@given(lengths, buckets)
def test_bucket_is_the_smallest_multiple_at_or_above(length: int, bucket: int) -> None:
    value = bucket_up(length, bucket)
    assert value % bucket == 0
    assert value >= length and value >= bucket
    assert value < max(length, 1) + bucket


def test_bucket_examples_from_the_paper() -> None:
    assert [bucket_up(n) for n in (0, 1, 50, 51, 100, 101, 512)] == [50, 50, 50, 100, 100, 150, 550]


@given(samples, buckets)
def test_label_is_the_bucketed_max(values: list[int], bucket: int) -> None:
    assert max_length(values) == max(values)
    assert all(max_length(values) >= value for value in values)
    assert label(values, bucket) == bucket_up(max(values), bucket)


def test_bad_label_inputs() -> None:
    with pytest.raises(ValueError):
        max_length([])
    with pytest.raises(ValueError):
        max_length([3, -1])
    with pytest.raises(ValueError):
        bucket_up(10, 0)


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_matches_numpy_and_stays_in_range(values: list[float], q: float) -> None:
    value = percentile(values, q)
    assert min(values) <= value <= max(values)
    assert value == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-6)


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=50), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_monotone(values: list[int], q1: float, q2: float) -> None:
    low, high = sorted((q1, q2))
    assert percentile(values, low) <= percentile(values, high)


@st.composite
def label_runs(draw: st.DrawFn) -> tuple[list[list[int]], int, int]:
    """Per-instruction sampled lengths (greedy first), a cap and a bucket."""
    cap = draw(st.integers(1, 600))
    runs = draw(st.lists(st.lists(st.integers(0, cap), min_size=1, max_size=5), min_size=1, max_size=40))
    return runs, cap, draw(buckets)


@given(label_runs())
def test_stats_invariants(run: tuple[list[list[int]], int, int]) -> None:
    runs, cap, bucket = run
    tops = [max(lengths) for lengths in runs]
    stats = label_stats(
        tops, [bucket_up(top, bucket) for top in tops], [top >= cap for top in tops], [r[0] for r in runs]
    )
    assert stats.count == len(runs) == stats.max_length.count
    summary = stats.max_length
    assert min(tops) <= summary.median <= summary.p90 <= summary.p99 <= summary.max == max(tops)
    assert min(tops) <= summary.mean <= max(tops)
    assert stats.label.mean >= summary.mean and stats.label.max % bucket == 0
    assert 0 <= stats.at_limit_share <= 1
    assert stats.at_limit_share == sum(top >= cap for top in tops) / len(tops)
    assert stats.spread is not None and stats.greedy_length is not None
    assert stats.spread.mean >= 0 and stats.spread.mean == pytest.approx(summary.mean - stats.greedy_length.mean)
    assert stats.max_above_greedy_share == sum(max(r) > r[0] for r in runs) / len(runs)


def test_stats_without_greedy_and_bad_input() -> None:
    stats = label_stats([10, 20], [50, 50], [False, True])
    assert stats.spread is None and stats.max_above_greedy_share is None and stats.at_limit_share == 0.5
    partial = label_stats([10, 20], [50, 50], [False, False], [None, 5])
    assert partial.spread == Summary.of([15])
    with pytest.raises(ValueError, match="greedy length exceeds"):
        label_stats([10], [50], [False], [11])
    with pytest.raises(ValueError):
        label_stats([], [], [])


def test_labels_module_does_not_import_torch() -> None:
    code = "import sys, data_tools.labels; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
