"""Scheduling on a continuous-batching engine (the fake vLLM backend over the tiny model): admission policies
(FCFS, SJF by predicted length, SJF + FCR caps with recompute), outputs equal to FCFS and in input order."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace

import pytest

from seqsched.engines.hf import HFEngine
from seqsched.engines.vllm import VLLMEngine
from seqsched.errors import SeqschedError
from seqsched.requests import Request
from serving.policy.admission import FirstComeFirstServed, ShortestPredictedFirst, make_policy, policy_for
from serving.policy.scheduler import Admission, Phase, RecomputeMode, ScheduleConfig, Strategy
from serving.runner import RunOptions, run
from tests.fake_vllm import LLM, fake_vllm_module
from tests.tiny_model import synthetic_prompts

BASE = ScheduleConfig(strategy=Strategy.VANILLA, limit=40, bin_width=5, batch_size=6)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def fake_engine(tiny_engine: HFEngine) -> VLLMEngine:
    return VLLMEngine(LLM(tiny_engine, max_num_seqs=4), tiny_engine.tokenizer, fake_vllm_module())


@pytest.fixture(scope="module")
def requests() -> list[Request]:
    return [Request(id=f"r{index}", prompt=prompt) for index, prompt in enumerate(synthetic_prompts(14, seed=6))]


def test_strategies_map_to_policies_unless_one_is_given() -> None:
    assert isinstance(policy_for(ScheduleConfig(strategy=Strategy.VANILLA)), FirstComeFirstServed)
    assert policy_for(ScheduleConfig(strategy=Strategy.SEQSCH)) == ShortestPredictedFirst(capped=False)
    assert policy_for(ScheduleConfig(strategy=Strategy.VBS)) == ShortestPredictedFirst(capped=False)
    assert policy_for(ScheduleConfig(strategy=Strategy.FCR)) == ShortestPredictedFirst(capped=True)
    assert isinstance(policy_for(ScheduleConfig(strategy=Strategy.FCR, policy=Admission.FCFS)), FirstComeFirstServed)
    assert policy_for(ScheduleConfig(strategy=Strategy.VANILLA, policy=Admission.SJF)).name is Admission.SJF
    assert not ScheduleConfig(strategy=Strategy.FCR, policy=Admission.FCFS).needs_predictions
    assert ScheduleConfig(strategy=Strategy.VANILLA, policy=Admission.SJF).needs_predictions


def test_policies_give_priorities_and_fcr_caps() -> None:
    cfg = ScheduleConfig(margin_tokens=2, bin_width=10, limit=40)
    budgets = [40, 40, 40, 12]
    fcfs = make_policy(Admission.FCFS).first(None, budgets, cfg)
    assert fcfs.priorities is None and fcfs.caps == budgets
    sjf = make_policy(Admission.SJF).first([3, 0, 17, 30], budgets, cfg)
    assert sjf.priorities == [5, 2, 19, 32] and sjf.caps == budgets
    capped = make_policy(Admission.SJF_FCR).first([3, 0, 17, 30], budgets, cfg)
    # The static batches' rule: the bin edge plus one token, never above the request's own budget.
    assert capped.caps == [11, 11, 21, 12]
    again = make_policy(Admission.SJF_FCR).recompute([40, 25])
    assert again.priorities == [40, 25] and again.caps == [40, 25]
    with pytest.raises(ValueError, match="predicted length"):
        make_policy(Admission.SJF).first(None, budgets, cfg)


@pytest.mark.parametrize("mode", list(RecomputeMode))
def test_priority_and_fcr_equal_fcfs(
    tiny_engine: HFEngine, fake_engine: VLLMEngine, requests: list[Request], mode: RecomputeMode
) -> None:
    fcfs = run(fake_engine, requests, None, BASE)
    static = run(tiny_engine, requests, None, BASE)
    assert [r.token_ids for r in fcfs.records] == [r.token_ids for r in static.records], "vLLM-like equals HF"
    assert fcfs.metrics.admission == "fcfs" and static.metrics.admission == "-"
    true = [record.num_tokens for record in fcfs.records]
    rng = random.Random(2)
    noisy = [max(0, length + rng.randint(-8, 8)) for length in true]
    for strategy in (Strategy.SEQSCH, Strategy.FCR):
        cfg = ScheduleConfig(strategy=strategy, limit=40, bin_width=5, recompute=mode)
        result = run(fake_engine, requests, noisy, cfg)
        assert [r.id for r in result.records] == [r.id for r in requests], "input order"
        assert [r.token_ids for r in result.records] == [r.token_ids for r in fcfs.records], strategy
        if strategy is Strategy.FCR:
            assert result.metrics.admission == "sjf-fcr"
            assert result.metrics.failed > 0 and result.batches[-1].phase is Phase.RECOMPUTE
            assert result.metrics.failed == len(result.batches[-1].request_ids)
        else:
            assert result.metrics.admission == "sjf"
            assert result.metrics.failed == 0 and len(result.batches) == 1


def test_policy_objects_decide_the_fake_vllm_order(fake_engine: VLLMEngine, requests: list[Request]) -> None:
    """The engine admits by the policy's priorities: SJF admits in predicted order, FCFS in arrival order, and an
    explicit policy overrides the strategy's."""
    predicted = [1 + (7 * index) % 11 for index in range(len(requests))]
    sjf = ScheduleConfig(strategy=Strategy.VANILLA, limit=40, policy=Admission.SJF)
    run(fake_engine, requests, predicted, sjf)
    admitted = [fake_engine.request_keys[request_id] for request_id in fake_engine.llm.llm_engine.admitted]
    assert admitted == sorted(range(len(requests)), key=lambda index: (predicted[index], index))
    fcfs = ScheduleConfig(strategy=Strategy.FCR, limit=40, policy=Admission.FCFS)
    result = run(fake_engine, requests, predicted, fcfs)
    admitted = [
        fake_engine.request_keys[request_id] for request_id in fake_engine.llm.llm_engine.admitted[len(requests) :]
    ]
    assert admitted == list(range(len(requests)))
    assert result.metrics.failed == 0 and result.metrics.admission == "fcfs"


def test_shortest_predicted_finishes_first(fake_engine: VLLMEngine, requests: list[Request]) -> None:
    fcfs = run(fake_engine, requests, None, BASE)
    true = [record.num_tokens for record in fcfs.records]
    cfg = ScheduleConfig(strategy=Strategy.SEQSCH, limit=40)
    result = run(fake_engine, requests, true, cfg)
    mean = sum(r.completion_s for r in result.records) / len(requests)
    assert result.metrics.latency_mean_s == pytest.approx(mean)
    assert result.metrics.latency_p50_s <= max(r.completion_s for r in result.records)
    order = sorted(range(len(requests)), key=lambda index: result.records[index].completion_s)
    first = [true[index] for index in order[:4]]
    assert max(first) <= sorted(true)[7], f"the first to finish are among the shortest ({first}, mean {mean:.3f})"
    assert result.metrics.time_to_half_s == sorted(r.completion_s for r in result.records)[6]


def test_dispatch_and_errors(tiny_engine: HFEngine, fake_engine: VLLMEngine, requests: list[Request]) -> None:
    assert len(run(fake_engine, requests[:3], None, BASE).batches) == 1, "continuous: one submission"
    assert len(run(tiny_engine, requests[:12], None, BASE).batches) == 2, "static batches of 6"
    with pytest.raises(SeqschedError, match="needs predicted lengths"):
        run(fake_engine, requests, None, ScheduleConfig(strategy=Strategy.FCR))
    with pytest.raises(SeqschedError, match="needs predicted lengths"):
        run(fake_engine, requests, None, ScheduleConfig(strategy=Strategy.VANILLA, policy=Admission.SJF))


def test_fcr_caps_follow_one_rule_on_every_engine(
    tiny_engine: HFEngine, fake_engine: VLLMEngine, requests: list[Request]
) -> None:
    """A request predicted exactly its true length finishes in its first pass on both engines (one step past
    the bin edge for its stop token): none is recomputed for nothing."""
    true = [record.num_tokens for record in run(tiny_engine, requests, None, BASE).records]
    cfg = ScheduleConfig(strategy=Strategy.FCR, limit=40, bin_width=1)  # every bin edge = the predicted length
    for engine in (tiny_engine, fake_engine):
        result = run(engine, requests, true, cfg)
        assert result.metrics.failed == 0, type(engine).__name__


def test_every_runner_reports_each_request_once_as_it_finishes(
    tiny_engine: HFEngine, fake_engine: VLLMEngine, requests: list[Request]
) -> None:
    """on_finished (what serve's checkpoint listens to) fires once per request with its final record, on static
    and continuous engines alike, FCR recompute included; positions keep a part of a job sampling as the whole."""
    true = [record.num_tokens for record in run(tiny_engine, requests, None, BASE).records]
    rng = random.Random(3)
    noisy = [max(0, length + rng.randint(-8, 8)) for length in true]
    cfg = ScheduleConfig(strategy=Strategy.FCR, limit=40, bin_width=5, batch_size=4, vbs={})
    for engine in (tiny_engine, fake_engine):
        reported: list[tuple[int, object]] = []
        options = RunOptions(on_finished=lambda index, record, seen=reported: seen.append((index, record)))
        result = run(engine, requests, noisy, cfg, options)
        assert result.metrics.failed > 0, "some requests went through the recompute pass"
        assert sorted(index for index, _ in reported) == list(range(len(requests))), type(engine).__name__
        assert all(record is result.records[index] for index, record in reported)
    sampled = [replace(request, temperature=1.0) for request in requests]
    whole = run(tiny_engine, sampled, None, BASE, RunOptions(seed=5))
    part = [3, 7, 8]
    again = run(tiny_engine, [sampled[i] for i in part], None, BASE, RunOptions(seed=5, positions=tuple(part)))
    assert [r.token_ids for r in again.records] == [whole.records[i].token_ids for i in part]
