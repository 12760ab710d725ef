"""Tuning on the served workload: held-out errors resampled onto the served predictions, and the vanilla guard."""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import replace

import pytest

from serving.policy.scheduler import ScheduleConfig, Strategy, plan
from serving.policy.stepcost import GridStepCost, StepCost, Table
from serving.policy.workload import ErrorModel, TuneConfig, decide, draw_workload, vanilla_config

LIMIT = 256


def cpu_like_cost() -> GridStepCost:
    """A CPU where a row's KV cache is read every step: at long contexts a big batch costs more per row than a
    small one (the issue's measurement: 14 ms per row-step at 192 rows vs 11.2 at 16)."""

    def step(batch: int, context: float) -> float:
        kv = batch * context
        return 0.05 + 0.002 * batch + 3e-5 * kv + 6e-10 * kv * kv  # memory traffic grows faster than linearly

    decode = [(b, float(c), step(b, c)) for c in (32, 96, 192, 320) for b in (1, 4, 16, 64, 192, 256)]
    prefill = [(b, float(c), 0.01 + 1e-3 * b * c) for c in (16, 64, 128) for b in (1, 16, 64, 256)]
    return GridStepCost(Table(tuple(decode)), Table(tuple(prefill)))


def held_out(count: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """A predictor that is right within +-30% most of the time."""
    rng = random.Random(seed)
    true = [min(LIMIT, int(rng.lognormvariate(4.3, 0.8))) for _ in range(count)]
    predicted = [max(0, int(length * rng.uniform(0.7, 1.3))) for length in true]
    return predicted, true


def test_error_model_bins_merge_and_draws_follow_the_errors() -> None:
    predicted, true = held_out(600)
    model = ErrorModel.fit(predicted, true, bin_width=50, min_count=20)
    assert all(len(group) >= 20 for group in model.errors) and list(model.edges) == sorted(model.edges)
    assert sum(len(group) for group in model.errors) == 600
    rng = random.Random(1)
    drawn = model.draw([100] * 2000, LIMIT, rng)
    assert all(0 <= value <= LIMIT for value in drawn)
    ratios = [math.log((t + 1) / (p + 1)) for p, t in zip(predicted, true, strict=True) if 50 < p <= 150]
    assert statistics.median(math.log((d + 1) / 101) for d in drawn) == pytest.approx(
        statistics.median(ratios), abs=0.05
    )
    exact = ErrorModel.exact()
    assert exact.is_exact and exact.draw([0, 7, 300], LIMIT, rng) == [0, 7, LIMIT]
    assert draw_workload([5, 9], 30, exact, LIMIT, draws=4).true == ([5, 9],), "exact lengths need one draw"
    with pytest.raises(ValueError):
        ErrorModel.fit([1, 2], [3])


def test_long_answers_do_not_get_big_batches_and_short_ones_win() -> None:
    cost = cpu_like_cost()
    errors = ErrorModel.fit(*held_out(400))
    start = ScheduleConfig(strategy=Strategy.FCR, limit=LIMIT)
    vanilla = vanilla_config(start, 16)
    rng = random.Random(3)
    # Long answers: most predicted at or near the limit, as on open-ended chat prompts.
    long_predicted = [rng.choice([LIMIT, LIMIT, LIMIT, rng.randint(150, LIMIT)]) for _ in range(96)]
    prompts = [rng.randint(20, 120) for _ in long_predicted]
    workload = draw_workload(long_predicted, prompts, errors, LIMIT, draws=2)
    decision = decide(workload, start, vanilla, cost, min_gain=0.05)
    assert decision.scheduled_s <= decision.details["simulated_start_s"] + 1e-9
    for batch in plan(long_predicted, decision.scheduled, prompts=prompts):
        if batch.max_new_tokens >= 200:
            assert len(batch) <= 64, "no 192-row bets on long contexts where big batches cost more per row"
    if decision.fallback:
        assert decision.config.strategy is Strategy.VANILLA and decision.config.batch_size == 16
        assert decision.scheduled_s * 1.05 > decision.vanilla_s
    else:
        assert decision.vanilla_s >= decision.scheduled_s * 1.05
    # Short answers: sorting, binning and bigger short bins win by far.
    short_predicted = [rng.randint(5, 120) for _ in range(96)]
    short = decide(draw_workload(short_predicted, prompts, errors, LIMIT, draws=2), start, vanilla, cost)
    assert not short.fallback and short.config.strategy is Strategy.FCR and short.predicted_gain > 1.3
    assert "tuned schedule" in short.describe() and short.as_dict()["fallback_to_vanilla"] is False


def test_no_schedule_wins_without_spread_so_vanilla_serves() -> None:
    # Every request runs to the limit: nothing to sort, and FCR's caps only add recompute. Vanilla must serve.
    cost = StepCost(fixed_s=0.05, per_row_s=0.004, per_context_s=3e-5)
    errors = ErrorModel.fit([LIMIT] * 50, [LIMIT] * 50)
    start = ScheduleConfig(strategy=Strategy.FCR, limit=LIMIT, vbs={50: 16}, batch_size=16)
    vanilla = vanilla_config(start, 16)
    workload = draw_workload([LIMIT] * 64, 40, errors, LIMIT, draws=1)
    decision = decide(workload, start, vanilla, cost, min_gain=0.05, tune=False)
    assert decision.fallback and decision.config == vanilla
    assert "serving VANILLA batches" in decision.describe()


def test_the_tuner_never_proposes_a_batch_above_the_budget() -> None:
    cost = StepCost(fixed_s=0.2, per_row_s=0.001, per_context_s=0.0)  # steps are dear: big batches tempt
    errors = ErrorModel.fit(*held_out(300))
    start = ScheduleConfig(strategy=Strategy.FCR, limit=LIMIT, token_budget=6000)
    predicted = [random.Random(5).randint(0, LIMIT) for _ in range(200)]
    workload = draw_workload(predicted, [50] * len(predicted), errors, LIMIT, draws=1)  # each request's prompt
    decision = decide(workload, start, vanilla_config(start, 16), cost)
    tuned = decision.scheduled
    for edge, size in tuned.vbs.items():
        assert size * (50 + edge) <= 6000 or size == 1
    assert tuned.batch_size * (50 + LIMIT) <= 6000


def test_tune_config_is_checked() -> None:
    with pytest.raises(ValueError):
        TuneConfig(draws=0)
    with pytest.raises(ValueError):
        TuneConfig(min_gain=-1)
    assert replace(TuneConfig(), data="x").min_gain == 0.05
