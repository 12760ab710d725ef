"""Data-parallel sharding by predicted tokens, and gathering back in input order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seqsched.sharding import gather_in_order, shard_by_predicted_tokens, shard_loads


@given(st.lists(st.integers(min_value=0, max_value=600), max_size=200), st.integers(min_value=1, max_value=8))
def test_every_request_in_exactly_one_shard_and_gathered_in_order(predicted: list[int], shards: int) -> None:
    groups = shard_by_predicted_tokens(predicted, shards)
    assert len(groups) == shards
    flat = sorted(index for group in groups for index in group)
    assert flat == list(range(len(predicted)))
    assert all(group == sorted(group) for group in groups)
    results = [[f"out-{index}" for index in group] for group in groups]
    assert gather_in_order(groups, results, len(predicted)) == [f"out-{i}" for i in range(len(predicted))]


@given(st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=200), st.integers(1, 8))
def test_loads_are_balanced_within_one_request(predicted: list[int], shards: int) -> None:
    loads = shard_loads(predicted, shard_by_predicted_tokens(predicted, shards))
    # Greedy LPT: the heaviest shard exceeds the lightest by at most the longest request (+1 per request).
    assert max(loads) - min(loads) <= max(predicted) + len(predicted)


def test_balances_tokens_not_counts() -> None:
    predicted = [500, 500, 10, 10, 10, 10, 10, 10]
    groups = shard_by_predicted_tokens(predicted, 2)
    assert sorted(shard_loads(predicted, groups)) == [530, 530]
    assert sorted(len(group) for group in groups) == [4, 4]
    lopsided = [500, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10]
    assert sorted(len(g) for g in shard_by_predicted_tokens(lopsided, 2)) == [1, 10]


def test_gather_rejects_bad_shards() -> None:
    with pytest.raises(ValueError):
        gather_in_order([[0, 1], [1]], [["a", "b"], ["c"]], 2)
    with pytest.raises(ValueError):
        gather_in_order([[0]], [["a"]], 2)
    with pytest.raises(ValueError):
        shard_by_predicted_tokens([1], 0)
