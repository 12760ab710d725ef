"""Tuning by simulation (margin, bin width, VBS) and the step-cost fit on the tiny model."""

from __future__ import annotations

import random

import pytest

from seqsched.engines.hf import HFEngine
from serving.measure.costmodel import StepSample, fit, measure, report
from serving.policy.scheduler import ScheduleConfig
from serving.policy.simulate import StepCost
from serving.policy.tuning import Workload, flat_table, tune_margin, tune_vbs

COST = StepCost(fixed_s=0.08, per_row_s=0.004, per_context_s=0.0, prefill_fixed_s=0.01, prefill_token_s=0.0002)


def pairs(count: int, bias: float, seed: int = 0) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    true = [min(600, int(rng.lognormvariate(4.5, 0.7))) for _ in range(count)]
    predicted = [max(0, int(length * bias * rng.uniform(0.8, 1.2))) for length in true]
    return predicted, true


def test_tune_margin_adds_a_margin_for_an_underestimating_predictor() -> None:
    predicted, true = pairs(600, bias=0.6)
    tuned = tune_margin(Workload.single(predicted, true), ScheduleConfig(), COST, bin_widths=(50,))
    assert tuned.best_s < tuned.baseline_s and tuned.gain > 1
    assert tuned.config.margin_tokens > 0 or tuned.config.margin_ratio > 0
    assert min(row["time_s"] for row in tuned.candidates) == pytest.approx(tuned.best_s)


def test_tune_margin_keeps_the_paper_policy_for_exact_predictions() -> None:
    _, true = pairs(300, bias=1.0)
    tuned = tune_margin(Workload.single(true, true), ScheduleConfig(), COST, bin_widths=(50,))
    assert (tuned.config.margin_tokens, tuned.config.margin_ratio) == (0, 0.0)
    assert tuned.best_s == tuned.baseline_s


def test_flat_tables_join_the_margin_search_when_steps_are_dear() -> None:
    # A step costs 20x a row: big batches win everywhere, which the paper's table (16 rows beyond 250) is not.
    predicted, true = pairs(400, bias=0.9, seed=2)
    plain = tune_margin(Workload.single(predicted, true), ScheduleConfig(), COST, bin_widths=(50,))
    flat = tune_margin(
        Workload.single(predicted, true), ScheduleConfig(), COST, bin_widths=(50,), flat_sizes=(16, 64, 256)
    )
    assert flat.best_s < plain.best_s
    assert len(set(flat.config.vbs.values())) == 1 and flat.config.batch_size in (64, 256)
    assert flat.config.vbs == flat_table(flat.config, flat.config.batch_size).vbs
    assert any(row["flat"] == "" for row in flat.candidates)  # the paper's table stays a candidate


def test_tune_vbs_never_predicts_slower_than_the_table() -> None:
    predicted, true = pairs(500, bias=1.0, seed=4)
    tuned = tune_vbs(Workload.single(predicted, true), ScheduleConfig(), COST, sizes=(8, 16, 64, 256), rounds=1)
    assert tuned.best_s <= tuned.baseline_s
    assert set(tuned.config.vbs) == set(range(50, 512, 50)) | {512}


def test_fit_recovers_a_linear_cost() -> None:
    truth = StepCost(fixed_s=0.05, per_row_s=0.002, per_context_s=1e-5, prefill_fixed_s=0.02, prefill_token_s=3e-4)
    samples = [
        StepSample(batch, prompt, 17, truth.prefill_s(batch, prompt), truth.step_s(batch, prompt + 8.5) * 16)
        for batch in (1, 4, 16, 64)
        for prompt in (32, 160)
    ]
    fitted = fit(samples)
    for name in ("fixed_s", "per_row_s", "per_context_s", "prefill_fixed_s", "prefill_token_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-6)
    with pytest.raises(ValueError):
        fit(samples[:2])


def test_measure_on_the_tiny_model(tiny_engine: HFEngine) -> None:
    samples = measure(tiny_engine, batch_sizes=(1, 4), prompt_lengths=(8, 24), steps=4)
    assert [(s.batch, s.prompt_tokens) for s in samples] == [(1, 8), (4, 8), (1, 24), (4, 24)]
    assert all(s.decode_s > 0 and s.prefill_s > 0 for s in samples)
    rows = report(samples, fit(samples))
    assert len(rows) == 4 and all(row["fitted_step_ms"] >= 0 for row in rows)
