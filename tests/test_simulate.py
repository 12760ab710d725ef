"""The torch-free simulator: hand-checked costs and consistency with the scheduler."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from serving.scheduler import Batch, RecomputeMode, ScheduleConfig, Strategy, engine_steps, failed_requests, plan
from serving.simulate import StepCost, _evicting_decode_s, compare, simulate, simulate_batches

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


def test_workloads_add_up_runs_served_alone() -> None:
    from serving.simulate import simulate_workloads

    rng = random.Random(4)
    true = [rng.randint(1, 300) for _ in range(90)]
    predicted = [max(1, value + rng.randint(-60, 60)) for value in true]
    cfg = ScheduleConfig(strategy=Strategy.FCR, limit=256)
    cost = StepCost()
    whole = simulate_workloads(predicted, true, cfg, cost)
    assert whole.summary() == simulate(predicted, true, cfg, cost).summary()
    runs = simulate_workloads(predicted, true, cfg, cost, workload=40)
    parts = [simulate(predicted[i : i + 40], true[i : i + 40], cfg, cost) for i in (0, 40, 80)]
    assert runs.total.time_s == pytest.approx(sum(part.total.time_s for part in parts))
    assert runs.failed == [40 * n + index for n, part in enumerate(parts) for index in part.failed]
    assert sorted(i for batch in runs.batches if batch.phase.value == "initial" for i in batch.request_ids) == list(
        range(90)
    )
    # Small runs fill fewer of the big VBS batches: never cheaper than one run of everything.
    assert runs.total.time_s >= whole.total.time_s


def test_sizing_takes_the_most_prompts_that_fit() -> None:
    from serving.bench_setup import RowPlan, candidate_counts, fit_count

    assert candidate_counts(1000)[:3] == [1000, 975, 950] and candidate_counts(1000)[-6:] == [25, 16, 8, 4, 2, 1]
    assert candidate_counts(30) == [30, 25, 16, 8, 4, 2, 1]
    true = [100] * 400
    rows = [RowPlan("vanilla", ScheduleConfig(strategy=Strategy.VANILLA, limit=128))]
    cost = StepCost(fixed_s=0.01, per_row_s=0.0, per_context_s=0.0, prefill_fixed_s=0.0, prefill_token_s=0.0)
    # A batch of 16 runs 101 steps, 100 of them forwards of 10 ms: 1 s per 16 prompts; 8.5 s of 10 may be used.
    count, info = fit_count(rows, None, true, [20] * 400, cost, seconds_left=10.0)
    assert count == 125 and info["simulated_row_s"]["vanilla"] <= 10.0 * 0.85
    assert info["tried"][0]["count"] == 400
    count, _ = fit_count(rows, None, true, [20] * 400, cost, seconds_left=10.0, repeats=2)
    assert count == 50
