"""The continuous pool's size from the step cost (pure), and the continuous-batching simulator."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from serving.measure.slots import SLOT_SHARE, choose_slots, mean_context
from serving.policy.admission import make_policy
from serving.policy.scheduler import Admission, ScheduleConfig
from serving.policy.simulate import StepCost
from serving.policy.simulate_continuous import simulate_continuous

COST = StepCost(fixed_s=0.08, per_row_s=0.003, per_context_s=5e-6)


def rows_per_s(cost: StepCost, batch: int, context: float) -> float:
    return batch / cost.step_s(batch, context)


def test_the_pool_is_the_smallest_reaching_the_share_of_the_bound() -> None:
    context = mean_context(48, 256)
    assert context == 48 + 64
    slots = choose_slots(COST, context)
    best = max(rows_per_s(COST, size, context) for size in range(1, 257))  # any cost model: the best up to 256
    assert rows_per_s(COST, slots, context) >= SLOT_SHARE * best > rows_per_s(COST, slots - 1, context)
    assert choose_slots(COST, context, most=16) == 16
    assert choose_slots(StepCost(fixed_s=0.0, per_row_s=0.01, per_context_s=0.0), 10) == 1, "no fixed cost"
    assert choose_slots(COST, context, share=0.5) < slots < choose_slots(COST, context, share=0.9)
    with pytest.raises(ValueError, match="share"):
        choose_slots(COST, context, share=1.0)


def lengths(count: int = 120, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [256 if rng.random() < 0.35 else rng.randint(1, 255) for _ in range(count)]


def test_sjf_cuts_mean_latency_at_the_same_throughput_and_a_full_pool_erases_it() -> None:
    true = lengths()
    cfg = ScheduleConfig(limit=256)
    fcfs = simulate_continuous(true, None, make_policy(Admission.FCFS), cfg, 16, COST).summary()
    sjf = simulate_continuous(true, true, make_policy(Admission.SJF), cfg, 16, COST).summary()
    assert sjf["latency_mean_s"] < 0.8 * fcfs["latency_mean_s"]
    assert sjf["time_to_half_s"] < 0.5 * fcfs["time_to_half_s"]
    assert sjf["samples_per_s"] == pytest.approx(fcfs["samples_per_s"], rel=0.05)
    live_row_steps = sum(length + (length < 256) - 1 for length in true)  # each row's forwards after the prefill
    for sim in (fcfs, sjf):
        assert sim["row_steps"] - sim["retired_row_steps"] == live_row_steps < sim["row_steps"]
    # With a slot for every request everyone is admitted at once: the order no longer matters.
    everyone = [
        simulate_continuous(true, order, make_policy(admission), cfg, len(true), COST).summary()["latency_mean_s"]
        for admission, order in ((Admission.FCFS, None), (Admission.SJF, true))
    ]
    assert everyone[0] == pytest.approx(everyone[1])


def test_fcr_caps_recompute_the_under_predicted() -> None:
    true = lengths(60, seed=1)
    predicted = [max(1, length // 2) for length in true]
    cfg = ScheduleConfig(limit=256, bin_width=50)
    sim = simulate_continuous(true, predicted, make_policy(Admission.SJF_FCR), cfg, 8, COST)
    caps = make_policy(Admission.SJF_FCR).first(predicted, [256] * len(true), cfg).caps
    assert sorted(sim.failed) == [index for index in range(len(true)) if true[index] >= caps[index] < 256]
    assert all(not math.isnan(value) and value > 0 for value in sim.completion_s)
    plain = simulate_continuous(true, predicted, make_policy(Admission.SJF), cfg, 8, COST)
    assert sim.row_steps > plain.row_steps, "recomputed attempts cost row-steps"


def test_serving_engine_measures_the_pool_when_slots_are_not_given(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from seqsched.engines.api import Batching
    from seqsched.engines.config import EngineConfig
    from seqsched.engines.hf_continuous import HFContinuousEngine
    from seqsched.model_specs import ModelConfig
    from seqsched.requests import Request
    from serving.measure.slots import serving_engine
    from tests.tiny_model import synthetic_prompts

    requests = [Request(id=str(index), prompt=prompt) for index, prompt in enumerate(synthetic_prompts(6))]
    model = ModelConfig(spec=str(tiny_model_dir))
    engine = serving_engine(EngineConfig(batching=Batching.CONTINUOUS), model, requests, 40)
    assert isinstance(engine, HFContinuousEngine) and 1 <= engine.slots <= len(requests)
    assert f"continuous engine: {engine.slots} slots" in capsys.readouterr().out
    given = serving_engine(EngineConfig(batching=Batching.CONTINUOUS, slots=2, admit_min=2), model, requests, 40)
    assert isinstance(given, HFContinuousEngine) and (given.slots, given.admit_min) == (2, 2)
