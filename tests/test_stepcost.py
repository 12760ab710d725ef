"""Cost models behind one interface: the measured table (interpolation, extrapolation, exact sums) and the
linear formula; both read back from JSON."""

from __future__ import annotations

import random

import pytest

from serving.policy.scheduler import Batch
from serving.policy.simulate import _evicting_decode_s, simulate_batches
from serving.policy.stepcost import GridStepCost, StepCost, Table, cost_from_dict

LINEAR = StepCost(fixed_s=0.05, per_row_s=0.003, per_context_s=3e-5, context_s=1e-4, prefill_fixed_s=0.01)


def grid_of(model: StepCost, batches: list[int], contexts: list[int], cap: int | None = None) -> GridStepCost:
    """A table sampled from a model on a staircase grid (batch x context <= cap beyond the two smallest)."""
    decode = [
        (b, float(c), model.step_s(b, c))
        for c in contexts
        for position, b in enumerate(batches)
        if cap is None or position < 2 or b * c <= cap
    ]
    prefill = [(b, float(c), model.prefill_s(b, c)) for c in contexts for b in batches]
    return GridStepCost(Table(tuple(decode)), Table(tuple(prefill)))


def test_a_table_of_a_bilinear_cost_reproduces_it_everywhere() -> None:
    # The linear model is bilinear in (batch, context): interpolation and extrapolation are both exact.
    grid = grid_of(LINEAR, [1, 4, 16, 64], [32, 96, 320], cap=6000)
    rng = random.Random(0)
    for _ in range(200):
        batch, context = rng.randint(1, 300), rng.uniform(10, 700)
        assert grid.step_s(batch, context) == pytest.approx(LINEAR.step_s(batch, context), rel=1e-9)
        prompt = rng.randint(5, 500)
        assert grid.prefill_s(batch, prompt) == pytest.approx(LINEAR.prefill_s(batch, prompt), rel=1e-9)


@pytest.mark.parametrize("model", ["linear", "grid"])
def test_span_and_decode_equal_a_loop(model: str) -> None:
    truth = StepCost(fixed_s=0.05, per_row_s=0.003, per_context_s=3e-5)
    cost = (
        truth
        if model == "linear"
        else GridStepCost(
            Table(
                (
                    (1, 32.0, 0.05),
                    (16, 32.0, 0.12),
                    (64, 32.0, 0.3),
                    (1, 150.5, 0.06),
                    (16, 150.5, 0.3),
                    (4, 320.0, 0.4),
                    (16, 320.0, 0.9),
                )
            ),
            Table(((1, 32.0, 0.1), (8, 32.0, 0.5))),
        )
    )
    for batch, first, last in [(7, 1, 1), (16, 20, 400), (100, 33, 350), (3, 150, 151), (64, 400, 300)]:
        looped = sum(cost.step_s(batch, context) for context in range(first, last + 1))
        assert cost.span_s(batch, first, last) == pytest.approx(looped, rel=1e-9, abs=1e-12)
    assert cost.decode_s(9, 30, 12) == pytest.approx(sum(cost.step_s(9, 12 + t) for t in range(1, 30)))
    finish = [3, 3, 9, 20]
    looped = sum(cost.step_s(sum(f > t for f in finish), 5 + t) for t in range(1, max(finish)))
    assert _evicting_decode_s(sorted(finish), cost, 5) == pytest.approx(looped)


def test_extrapolation_never_gets_cheaper_with_more_rows_or_context() -> None:
    # A noisy last pair (64 rows measured cheaper than 32) must not make 200 rows cheaper than 64.
    table = Table(((1, 32.0, 0.05), (16, 32.0, 0.2), (32, 32.0, 0.5), (64, 32.0, 0.45)))
    assert table.value(200, 32) >= table.value(64, 32) > 0
    assert table.value(64, 32) == pytest.approx(0.45) and table.value(48, 32) == pytest.approx(0.475)
    # One length only: constant along the length.
    assert table.value(16, 500) == pytest.approx(0.2)


def test_simulated_batches_split_prefill_and_decode() -> None:
    grid = grid_of(LINEAR, [1, 8], [16, 64])
    stats, _ = simulate_batches([Batch((0, 1), 10)], [3, 5], [20, 20], grid, prompt_tokens=[12, 30])
    assert stats.prefill_s == pytest.approx(LINEAR.prefill_s(2, 30))
    assert stats.decode_s == pytest.approx(LINEAR.decode_s(2, 6, 30))
    assert stats.time_s == pytest.approx(stats.prefill_s + stats.decode_s)


def test_cost_json_round_trip() -> None:
    grid = grid_of(LINEAR, [1, 4, 16], [32, 128])
    again = cost_from_dict(grid.to_dict())
    assert isinstance(again, GridStepCost) and again.step_s(10, 77) == pytest.approx(grid.step_s(10, 77))
    assert cost_from_dict(LINEAR.to_dict()) == LINEAR
    assert cost_from_dict({"fixed_s": 0.1}) == StepCost(fixed_s=0.1)
    cache = {"measured": "today", "model": "linear", "linear": LINEAR.to_dict(), "grid": grid.to_dict()}
    assert cost_from_dict(cache) == LINEAR
    with pytest.raises(ValueError):
        cost_from_dict({"nothing": 1})
    with pytest.raises(ValueError):
        Table(((0, 32.0, 0.1),))
