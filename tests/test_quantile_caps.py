"""Risk-aware FCR caps: each request's length at a quantile of its predicted distribution, the quantile chosen by
the simulation tuner on each quantile's own held-out errors."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from serving.measure.autotune import Tuner, supports_quantiles
from serving.measure.memory import KVBudget
from serving.policy.scheduler import ScheduleConfig, Strategy
from serving.policy.stepcost import StepCost
from serving.policy.workload import ErrorModel, TuneConfig

COST = StepCost(fixed_s=0.05, per_row_s=0.002, per_context_s=1e-5)


def test_the_tuner_keeps_the_quantile_that_serves_fastest() -> None:
    rng = random.Random(3)
    true = [rng.choice([rng.randint(5, 60), 256]) for _ in range(300)]  # short answers, or to the limit
    # q=0.5 under-states every long answer (many FCR failures); q=0.9 covers them: fewer recomputes.
    low = [min(length, 40) for length in true]
    high = [length if length < 256 else 250 for length in true]
    errors = {0.5: ErrorModel.fit(low, true), 0.9: ErrorModel.fit(high, true)}
    tuner = Tuner(COST, KVBudget(None, "test"), TuneConfig(draws=2, quantiles=(0.5, 0.9)), errors_by_quantile=errors)
    start = ScheduleConfig(strategy=Strategy.FCR, limit=256)
    served = [rng.choice([rng.randint(5, 60), 256]) for _ in range(120)]
    lengths = {0.5: [min(v, 40) for v in served], 0.9: [v if v < 256 else 250 for v in served]}
    quantile, decision = tuner.decide_quantiles(lengths, [30] * 120, [256] * 120, start, 16)
    assert quantile == 0.9
    assert decision.details["quantile"] == 0.9 and set(decision.details["quantiles"]) == {"0.5", "0.9"}
    assert decision.details["quantiles"]["0.9"] < decision.details["quantiles"]["0.5"]
    assert decision.tuning_s > 0


def test_quantiles_need_a_distribution_and_valid_values() -> None:
    class Point:
        def predict_requests(self, requests):  # type: ignore[no-untyped-def]
            return [1 for _ in requests]

    class Distribution(Point):
        quantiles_supported = True

    assert not supports_quantiles(Point(), TuneConfig(quantiles=(0.5,)))  # type: ignore[arg-type]
    assert supports_quantiles(Distribution(), TuneConfig(quantiles=(0.5,)))  # type: ignore[arg-type]
    assert not supports_quantiles(Distribution(), TuneConfig())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="quantiles"):
        TuneConfig(quantiles=(1.0,))


def test_probe_quantiles_grow_with_q() -> None:
    from lengthpred.probe import ProbeConfig, quantile_points

    config = ProbeConfig(bin_width=16, max_length=256)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(17), size=20)
    points = [quantile_points(probs, config, q) for q in (0.3, 0.5, 0.7, 0.9)]
    for lower, higher in itertools.pairwise(points):
        assert np.all(lower <= higher + 1e-9)
