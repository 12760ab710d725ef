"""The torch-free simulator: hand-checked costs and consistency with the scheduler."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from serving.policy.scheduler import (
    Batch,
    RecomputeMode,
    ScheduleConfig,
    Strategy,
    engine_steps,
    failed_requests,
    plan,
    recompute_plan,
)
from serving.policy.simulate import StepCost, _evicting_decode_s, compare, simulate, simulate_batches

COST = StepCost(fixed_s=0.1, per_row_s=0.01, per_context_s=0.001, prefill_fixed_s=0.5, prefill_token_s=0.002)


def test_step_cost_closed_form_matches_a_loop() -> None:
    batch, steps, prompt = 7, 30, 12
    looped = sum(COST.step_s(batch, prompt + t) for t in range(1, steps))
    assert COST.decode_s(batch, steps, prompt) == pytest.approx(looped)
    assert COST.prefill_s(batch, prompt) == pytest.approx(0.5 + 0.002 * 7 * 12)


def test_evicting_decode_matches_a_loop() -> None:
    finish = [3, 3, 9, 20]
    looped = sum(COST.step_s(sum(f > t for f in finish), 5 + t) for t in range(1, max(finish)))
    assert _evicting_decode_s(sorted(finish), COST, 5) == pytest.approx(looped)


def test_engine_steps_gives_one_more_step_when_a_row_may_go_on() -> None:
    assert engine_steps(50, [512, 512]) == 51
    assert engine_steps(50, [50, 20]) == 50


def test_a_batch_by_hand() -> None:
    # cap 5, limit 20: the engine runs 6 steps; 3 tokens stop at step 4, 10 tokens are cut at 6 and fail.
    stats, failed = simulate_batches([Batch((0, 1), 5)], [3, 10], [20, 20], COST, prompt_tokens=4)
    assert failed == [1]
    assert (stats.steps, stats.row_steps, stats.output_tokens, stats.attempt_tokens) == (6, 12, 3, 6)
    assert stats.time_s == pytest.approx(COST.prefill_s(2, 4) + COST.decode_s(2, 6, 4))
    # A row of exactly `cap` tokens still finishes (its stop token comes in the extra step).
    _, failed = simulate_batches([Batch((0,), 5)], [5], [20], COST)
    assert failed == []


def test_simulated_failures_match_the_plan_contract() -> None:
    rng = random.Random(1)
    predicted = [rng.randint(0, 400) for _ in range(500)]
    true = [max(0, int(p * rng.uniform(0.5, 1.5))) for p in predicted]
    cfg = ScheduleConfig()
    result = simulate(predicted, true, cfg, COST)
    assert result.failed == failed_requests(plan(predicted, cfg), true, [512] * 500)
    assert result.total.output_tokens == sum(min(t, 512) for t in true)
    summary = result.summary()
    assert summary["effective_token_ratio"] == pytest.approx(result.total.output_tokens / result.total.row_steps)


def test_oracle_lengths_never_fail_and_continue_costs_less() -> None:
    rng = random.Random(2)
    true = [rng.randint(0, 600) for _ in range(400)]
    assert simulate(true, true, ScheduleConfig(), COST).failed == []
    under = [t // 2 for t in true]
    scratch = simulate(under, true, ScheduleConfig(), COST)
    continued = simulate(under, true, ScheduleConfig(recompute=RecomputeMode.CONTINUE), COST)
    assert scratch.failed == continued.failed and scratch.failed
    assert continued.total.output_tokens == scratch.total.output_tokens
    assert continued.recompute.row_steps < scratch.recompute.row_steps
    assert continued.total.time_s < scratch.total.time_s


def test_compare_lists_every_strategy() -> None:
    rng = random.Random(3)
    true = [rng.randint(0, 512) for _ in range(300)]
    rows = compare(true, true, ScheduleConfig(), COST)
    assert [row["strategy"] for row in rows] == [strategy.value for strategy in Strategy]
    vanilla, seqsch = rows[0], rows[1]
    assert seqsch["effective_token_ratio"] > vanilla["effective_token_ratio"], "sorting pads less"
    evicted = simulate(true, true, replace(ScheduleConfig(), strategy=Strategy.VANILLA), COST, evict_finished=True)
    assert evicted.total.row_steps < vanilla["row_steps"]


def test_recompute_by_failed_cap_pads_less_than_input_order() -> None:
    # Issue 14: FCR's recompute pass batched failures in input order, mixing requests that outran a 50-token cap
    # with ones that outran 400; grouping them by the cap they failed at (then predicted length) pads far less.
    rng = random.Random(0)
    predicted = [min(1000, int(rng.lognormvariate(4.6, 0.8))) for _ in range(3000)]
    true = [max(1, int(p * rng.lognormvariate(0.0, 0.35))) for p in predicted]
    cfg = ScheduleConfig(limit=512)
    own = [cfg.limit] * len(true)
    batches = plan(predicted, cfg)
    failed = failed_requests(batches, true, own)
    caps = {index: batch.max_new_tokens for batch in batches for index in batch.request_ids}
    before, _ = simulate_batches(recompute_plan(failed, cfg), true, own, COST)
    after, _ = simulate_batches(recompute_plan(failed, cfg, failed_caps=caps, predicted=predicted), true, own, COST)
    assert (before.batches, before.output_tokens) == (after.batches, after.output_tokens)
    assert after.row_steps < 0.75 * before.row_steps and after.time_s < before.time_s
    assert simulate(predicted, true, cfg, COST).recompute.row_steps == after.row_steps, "simulate sorts them too"


def test_sizing_takes_the_most_prompts_that_fit() -> None:
    from serving.bench.setup import RowPlan, SizingInputs, candidate_counts, fit_count

    assert candidate_counts(1000)[:3] == [1000, 975, 950] and candidate_counts(1000)[-6:] == [25, 16, 8, 4, 2, 1]
    assert candidate_counts(30) == [30, 25, 16, 8, 4, 2, 1]
    true = [100] * 400
    rows = [RowPlan("vanilla", ScheduleConfig(strategy=Strategy.VANILLA, limit=128))]
    cost = StepCost(fixed_s=0.01, per_row_s=0.0, per_context_s=0.0, prefill_fixed_s=0.0, prefill_token_s=0.0)
    # A batch of 16 runs 101 steps, 100 of them forwards of 10 ms: 1 s per 16 prompts; 8.5 s of 10 may be used.
    inputs = SizingInputs(true, None, [20] * 400, [128] * 400)
    count, info = fit_count(rows, inputs, cost, seconds_left=10.0)
    assert count == 125 and info["simulated_row_s"]["vanilla"] <= 10.0 * 0.85
    assert info["tried"][0]["count"] == 400
    count, _ = fit_count(rows, inputs, cost, seconds_left=10.0, repeats=2)
    assert count == 50
