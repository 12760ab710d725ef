"""Scheduling on a continuous-batching engine (the fake vLLM backend over the tiny model): priorities by
predicted length, FCR caps with recompute, outputs equal to FCFS and in input order."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace

import pytest

from seqsched.engines.hf import HFEngine
from seqsched.engines.vllm import VLLMEngine
from seqsched.errors import SeqschedError
from seqsched.requests import Request
from serving.runner import RunOptions, run
from serving.runner.continuous import ContinuousMode, mode_for, priorities
from serving.scheduler import Phase, RecomputeMode, ScheduleConfig, Strategy
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


def test_modes_follow_the_strategies() -> None:
    assert mode_for(Strategy.VANILLA) is ContinuousMode.FCFS
    assert mode_for(Strategy.SEQSCH) is ContinuousMode.PRIORITY
    assert mode_for(Strategy.FCR) is ContinuousMode.PRIORITY_CAPPED
    assert priorities([3, 0, 17], ScheduleConfig(margin_tokens=2)) == [5, 2, 19]


@pytest.mark.parametrize("mode", list(RecomputeMode))
def test_priority_and_fcr_equal_fcfs(
    tiny_engine: HFEngine, fake_engine: VLLMEngine, requests: list[Request], mode: RecomputeMode
) -> None:
    fcfs = run(fake_engine, requests, None, BASE)
    static = run(tiny_engine, requests, None, BASE)
    assert [r.token_ids for r in fcfs.records] == [r.token_ids for r in static.records], "vLLM-like equals HF"
    true = [record.num_tokens for record in fcfs.records]
    rng = random.Random(2)
    noisy = [max(0, length + rng.randint(-8, 8)) for length in true]
    for strategy in (Strategy.SEQSCH, Strategy.FCR):
        cfg = ScheduleConfig(strategy=strategy, limit=40, bin_width=5, recompute=mode)
        result = run(fake_engine, requests, noisy, cfg)
        assert [r.id for r in result.records] == [r.id for r in requests], "input order"
        assert [r.token_ids for r in result.records] == [r.token_ids for r in fcfs.records], strategy
        if strategy is Strategy.FCR:
            assert result.metrics.failed > 0 and result.batches[-1].phase is Phase.RECOMPUTE
            assert result.metrics.failed == len(result.batches[-1].request_ids)
        else:
            assert result.metrics.failed == 0 and len(result.batches) == 1


def test_shortest_predicted_finishes_first(fake_engine: VLLMEngine, requests: list[Request]) -> None:
    fcfs = run(fake_engine, requests, None, BASE)
    true = [record.num_tokens for record in fcfs.records]
    cfg = ScheduleConfig(strategy=Strategy.SEQSCH, limit=40)
    result = run(fake_engine, requests, true, cfg)
    mean = sum(r.completion_s for r in result.records) / len(requests)
    assert result.metrics.latency_p50_s <= max(r.completion_s for r in result.records)
    order = sorted(range(len(requests)), key=lambda index: result.records[index].completion_s)
    first = [true[index] for index in order[:4]]
    assert max(first) <= sorted(true)[7], f"the first to finish are among the shortest ({first}, mean {mean:.3f})"


def test_dispatch_and_errors(tiny_engine: HFEngine, fake_engine: VLLMEngine, requests: list[Request]) -> None:
    assert len(run(fake_engine, requests[:3], None, BASE).batches) == 1, "continuous: one submission"
    assert len(run(tiny_engine, requests[:12], None, BASE).batches) == 2, "static batches of 6"
    with pytest.raises(SeqschedError, match="needs predicted lengths"):
        run(fake_engine, requests, None, ScheduleConfig(strategy=Strategy.FCR))


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
