"""The HF engine's continuous mode on the tiny model: outputs equal one-request runs whatever the pool, admission
in priority order, finished rows leave, the cache is compacted, and the runner's policies work on it."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from seqsched.engines.api import Batching, FinishReason, SamplingParams
from seqsched.engines.config import EngineConfig
from seqsched.engines.hf import HFEngine
from seqsched.engines.hf_continuous import HFContinuousEngine
from seqsched.engines.selection import build_engine, with_batching
from seqsched.errors import OptionError
from seqsched.model_specs import ModelConfig
from seqsched.requests import Request
from serving.policy.scheduler import Admission, Phase, ScheduleConfig, Strategy
from serving.runner import run
from tests.tiny_model import synthetic_prompts


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompt_ids(tiny_engine: HFEngine) -> list[list[int]]:
    return [tiny_engine.encode(prompt) for prompt in synthetic_prompts(14, seed=6)]


@pytest.fixture(scope="module")
def alone(tiny_engine: HFEngine, prompt_ids: list[list[int]]) -> list:
    """Each prompt generated on its own (the reference), limit 40."""
    return [tiny_engine.generate([ids], 40).rows[0] for ids in prompt_ids]


@pytest.mark.parametrize("slots", [1, 3, 5, 20])
def test_greedy_equals_one_request_runs(
    tiny_engine: HFEngine, prompt_ids: list[list[int]], alone: list, slots: int
) -> None:
    engine = HFContinuousEngine(tiny_engine, slots)
    rng = random.Random(slots)
    priorities = [rng.randint(0, 5) for _ in prompt_ids]
    timed = engine.submit(prompt_ids, [40] * len(prompt_ids), priorities)
    assert len({len(ids) for ids in prompt_ids}) > 1, "prompts of different lengths: the pool aligns them"
    for reference, item in zip(alone, timed, strict=True):
        assert item.row.token_ids == reference.token_ids
        assert item.row.finish_reason is reference.finish_reason
        assert item.row.finish_step == reference.finish_step
        assert item.row.text == reference.text
    stats = engine.last_stats
    assert stats is not None and stats.max_rows == min(slots, len(prompt_ids))
    # Each row is decoded for its own steps, plus the steps finished rows wait in the cache for the next removal.
    assert stats.row_steps - stats.retired_row_steps == sum(reference.finish_step - 1 for reference in alone)
    assert stats.retired_row_steps <= stats.steps * max(1, engine.admit_min)
    assert stats.padded_context_tokens >= stats.context_tokens
    if slots == 1:
        assert stats.padded_context_tokens == stats.context_tokens, "one row: no alignment padding"
        assert stats.prefills == len(prompt_ids)


def test_newcomers_wait_for_admit_min_free_slots(
    tiny_engine: HFEngine, prompt_ids: list[list[int]], alone: list
) -> None:
    """Admitting once 3 of 6 slots are free: fewer, larger prefills, the same outputs, never more than 6 rows."""
    one_by_one = HFContinuousEngine(tiny_engine, 6, admit_min=1)
    grouped = HFContinuousEngine(tiny_engine, 6, admit_min=3)
    assert HFContinuousEngine(tiny_engine, 16).admit_min == 2, "default: an eighth of the pool"
    caps = [40] * len(prompt_ids)
    first = one_by_one.submit(prompt_ids, caps)
    second = grouped.submit(prompt_ids, caps)
    assert [item.row.token_ids for item in second] == [item.row.token_ids for item in first]
    assert [item.row.token_ids for item in second] == [reference.token_ids for reference in alone]
    assert one_by_one.last_stats is not None and grouped.last_stats is not None
    assert grouped.last_stats.prefills < one_by_one.last_stats.prefills
    assert grouped.last_stats.max_rows == 6


def test_admission_follows_priorities_then_arrival(tiny_engine: HFEngine, prompt_ids: list[list[int]]) -> None:
    engine = HFContinuousEngine(tiny_engine, 1)
    priorities = [3, 1, 2, 1, 0, 3, 2, 1, 0, 2, 3, 1, 0, 2]
    timed = engine.submit(prompt_ids, [6] * len(prompt_ids), priorities)
    finish_order = sorted(range(len(prompt_ids)), key=lambda index: timed[index].finished_s)
    assert finish_order == sorted(range(len(prompt_ids)), key=lambda index: (priorities[index], index))


def test_per_request_caps_and_reasons(tiny_engine: HFEngine, prompt_ids: list[list[int]], alone: list) -> None:
    engine = HFContinuousEngine(tiny_engine, 4)
    caps = [1 + index % 7 for index in range(len(prompt_ids))]
    timed = engine.submit(prompt_ids, caps)
    for reference, cap, item in zip(alone, caps, timed, strict=True):
        assert item.row.token_ids == reference.token_ids[:cap]
        expected = FinishReason.STOP if reference.num_tokens < cap else FinishReason.LENGTH
        assert item.row.finish_reason is expected


def test_compaction_cuts_columns_no_row_uses(tiny_engine: HFEngine, prompt_ids: list[list[int]]) -> None:
    """A long row next to short ones: once the long one leaves, the pool is as wide as the rows that remain."""
    engine = HFContinuousEngine(tiny_engine, 2)
    long_prompt = prompt_ids[0] * 10
    shorts = [prompt_ids[2], *prompt_ids[3:7]]
    timed = engine.submit([long_prompt, *shorts], [3, *[30] * len(shorts)])
    stats = engine.last_stats
    assert stats is not None and timed[0].row.num_tokens == 3
    assert timed[1].row.num_tokens > 10, "the long row's neighbour runs on after it left"
    # Without compaction every step would stay at least as wide as the long prompt, for both rows.
    assert max(len(ids) for ids in shorts) + 31 < len(long_prompt)
    assert stats.padded_context_tokens < stats.steps * len(long_prompt)


def test_sampling_equals_one_request_runs_with_the_same_seeds(
    tiny_engine: HFEngine, prompt_ids: list[list[int]]
) -> None:
    sampling = SamplingParams(temperature=1.3, top_p=0.9)
    seeds = [100 + index for index in range(len(prompt_ids))]
    engine = HFContinuousEngine(tiny_engine, 4)
    timed = engine.submit(prompt_ids, [30] * len(prompt_ids), None, sampling, seeds)
    for ids, seed, item in zip(prompt_ids, seeds, timed, strict=True):
        assert item.row.token_ids == tiny_engine.generate([ids], 30, sampling, seeds=[seed]).rows[0].token_ids


def test_bad_arguments(tiny_engine: HFEngine, prompt_ids: list[list[int]]) -> None:
    engine = HFContinuousEngine(tiny_engine, 2)
    with pytest.raises(ValueError, match="one entry per request"):
        engine.submit(prompt_ids, [4])
    with pytest.raises(ValueError, match="max_tokens"):
        engine.submit(prompt_ids[:2], [4, 0])
    with pytest.raises(ValueError, match="slots"):
        HFContinuousEngine(tiny_engine, 0)


def test_views_share_one_model(tiny_model_dir, tiny_engine: HFEngine) -> None:
    pool = with_batching(tiny_engine, Batching.CONTINUOUS, 3)
    assert isinstance(pool, HFContinuousEngine) and pool.model is tiny_engine.model and pool.slots == 3
    assert with_batching(pool, Batching.STATIC) is tiny_engine
    assert with_batching(pool, Batching.CONTINUOUS, 3) is pool
    assert with_batching(tiny_engine, Batching.STATIC) is tiny_engine
    with pytest.raises(OptionError, match=r"engine\.slots"):
        with_batching(tiny_engine, Batching.CONTINUOUS)
    built = build_engine(EngineConfig(batching=Batching.CONTINUOUS, slots=2), ModelConfig(spec=str(tiny_model_dir)))
    assert isinstance(built, HFContinuousEngine) and built.batching is Batching.CONTINUOUS and built.slots == 2
    with pytest.raises(OptionError, match=r"engine\.slots"):
        EngineConfig(batching=Batching.CONTINUOUS, slots=0)


def test_runner_policies_on_the_pool(tiny_engine: HFEngine) -> None:
    """Every policy's outputs equal static vanilla's; SJF+FCR recomputes the requests its caps cut short."""
    requests = [Request(id=f"r{index}", prompt=prompt) for index, prompt in enumerate(synthetic_prompts(12, seed=9))]
    base = ScheduleConfig(strategy=Strategy.VANILLA, limit=40, bin_width=5, batch_size=4)
    vanilla = run(tiny_engine, requests, None, base)
    true = [record.num_tokens for record in vanilla.records]
    rng = random.Random(4)
    noisy = [max(0, length + rng.randint(-8, 8)) for length in true]
    pool = HFContinuousEngine(tiny_engine, 4)
    for policy in (Admission.FCFS, Admission.SJF, Admission.SJF_FCR):
        result = run(pool, requests, noisy, ScheduleConfig(limit=40, bin_width=5, policy=policy))
        assert [r.token_ids for r in result.records] == [r.token_ids for r in vanilla.records], policy
        assert result.metrics.admission == policy.value
        assert result.metrics.prefill_s > 0 and result.extra["submissions"]
        if policy is Admission.SJF_FCR:
            assert result.metrics.failed > 0 and result.batches[-1].phase is Phase.RECOMPUTE
        else:
            assert result.metrics.failed == 0 and len(result.batches) == 1
        # The oracle run is SJF with the true lengths.
    oracle = run(pool, requests, true, ScheduleConfig(limit=40, policy=Admission.SJF))
    assert [r.token_ids for r in oracle.records] == [r.token_ids for r in vanilla.records]


@pytest.mark.parametrize(("slots", "admit_min"), [(3, 1), (5, 2), (8, 4), (14, 8)])
def test_the_simulator_counts_what_the_pool_computes(
    tiny_engine: HFEngine, prompt_ids: list[list[int]], alone: list, slots: int, admit_min: int
) -> None:
    """serving.policy.simulate_continuous replays the pool's admissions, decode steps and retired rows exactly, given
    each request's true length (what the step-cost model prices is then the only approximation)."""
    from serving.policy.admission import Pass
    from serving.policy.simulate import StepCost
    from serving.policy.simulate_continuous import simulate_pass

    caps = [40] * len(prompt_ids)
    engine = HFContinuousEngine(tiny_engine, slots, admit_min)
    engine.submit(prompt_ids, caps)
    stats = engine.last_stats
    assert stats is not None
    lengths = [len(row.token_ids) for row in alone]
    sim, _ = simulate_pass(lengths, Pass(None, caps), slots, StepCost(), admit_min=admit_min)
    assert (sim.steps, sim.row_steps, sim.retired_row_steps, sim.prefills) == (
        stats.steps,
        stats.row_steps,
        stats.retired_row_steps,
        stats.prefills,
    )
    if slots == len(prompt_ids):
        assert stats.retired_row_steps > 0, "with every request in the pool, done rows wait for a compaction"
