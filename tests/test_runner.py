"""The runner on the tiny model: every strategy's greedy outputs equal vanilla's, order, FCR, OOM splits."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest

from seqsched.engines.api import GREEDY, Batching, BatchOutput, FinishReason, SamplingParams
from seqsched.engines.hf import HFEngine
from seqsched.errors import SeqschedError
from seqsched.requests import Request
from seqsched.stats import nearest_rank, percentile
from serving.policy.scheduler import Phase, RecomputeMode, ScheduleConfig, Strategy
from serving.policy.simulate import simulate
from serving.runner import RunOptions, RunResult, run
from tests.tiny_model import synthetic_prompts

# Small bins so the tiny model's 1..25-token answers spread over several bins and FCR caps bite.
BASE = ScheduleConfig(strategy=Strategy.VANILLA, limit=40, bin_width=5, batch_size=6, vbs={5: 12, 10: 8, 15: 6, 20: 5})


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the tiny model's steps are too small to share, and on a busy 2-core machine two
    spinning threads make each step ~8x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def requests() -> list[Request]:
    return [Request(id=f"r{index}", prompt=prompt) for index, prompt in enumerate(synthetic_prompts(24, seed=5))]


@pytest.fixture(scope="module")
def vanilla(tiny_engine: HFEngine, requests: list[Request]) -> RunResult:
    return run(tiny_engine, requests, None, BASE)


@pytest.fixture(scope="module")
def noisy(vanilla: RunResult) -> list[int]:
    """Predictions off by up to +-8 tokens, so some requests land in too low a bin and fail."""
    rng = random.Random(0)
    return [max(0, record.num_tokens + rng.randint(-8, 8)) for record in vanilla.records]


def outputs(result: RunResult) -> list[tuple[list[int], FinishReason]]:
    return [(record.token_ids, record.finish_reason) for record in result.records]


@pytest.mark.parametrize("mode", list(RecomputeMode))
@pytest.mark.parametrize("strategy", [Strategy.SEQSCH, Strategy.VBS, Strategy.FCR])
def test_greedy_outputs_equal_vanilla(
    tiny_engine: HFEngine,
    requests: list[Request],
    vanilla: RunResult,
    noisy: list[int],
    strategy: Strategy,
    mode: RecomputeMode,
) -> None:
    result = run(tiny_engine, requests, noisy, replace(BASE, strategy=strategy, recompute=mode))
    assert [record.id for record in result.records] == [request.id for request in requests], "input order"
    assert outputs(result) == outputs(vanilla)
    assert [record.text for record in result.records] == [record.text for record in vanilla.records]
    if strategy is Strategy.FCR:
        assert result.metrics.failed > 0, "the noisy predictions make some requests fail"
        assert any(batch.phase is Phase.RECOMPUTE for batch in result.batches)
    else:
        assert result.metrics.failed == 0


def test_fcr_recomputes_exactly_the_cut_short(
    tiny_engine: HFEngine, requests: list[Request], vanilla: RunResult, noisy: list[int]
) -> None:
    scratch = run(tiny_engine, requests, noisy, replace(BASE, strategy=Strategy.FCR))
    cut_short = set()
    for batch in scratch.batches:
        if batch.phase is Phase.INITIAL:
            cut_short.update(i for i in batch.request_ids if vanilla.records[i].num_tokens > batch.max_new_tokens)
    recomputed = {index for index, record in enumerate(scratch.records) if record.recomputed}
    assert recomputed == cut_short
    recompute_ids = [i for batch in scratch.batches if batch.phase is Phase.RECOMPUTE for i in batch.request_ids]
    assert sorted(recompute_ids) == sorted(cut_short), "each failed request recomputed once"
    metrics = scratch.metrics
    assert metrics.failed == len(cut_short) and metrics.failure_ratio == len(cut_short) / len(requests)
    assert metrics.recomputed_tokens == sum(record.attempt_tokens for record in scratch.records) > 0
    assert metrics.row_steps == sum(batch.row_steps for batch in scratch.batches)
    assert metrics.effective_token_ratio == metrics.generated_tokens / metrics.row_steps
    assert metrics.generated_tokens == sum(record.num_tokens for record in vanilla.records)
    assert 0 < metrics.recompute_share < 1 and metrics.latency_p50_s <= metrics.latency_p99_s

    continued = run(
        tiny_engine, requests, noisy, replace(BASE, strategy=Strategy.FCR, recompute=RecomputeMode.CONTINUE)
    )
    assert continued.metrics.failed == metrics.failed
    assert continued.metrics.recomputed_tokens == 0
    assert continued.metrics.recompute_row_steps < metrics.recompute_row_steps, "continuing skips the prefix"


def test_scheduling_computes_fewer_row_steps_than_vanilla(
    tiny_engine: HFEngine, requests: list[Request], vanilla: RunResult
) -> None:
    oracle = [record.num_tokens for record in vanilla.records]
    result = run(tiny_engine, requests, oracle, replace(BASE, strategy=Strategy.FCR))
    assert result.metrics.failed == 0, "exact lengths never overflow their bin"
    assert result.metrics.effective_token_ratio > vanilla.metrics.effective_token_ratio


def test_per_request_max_tokens(tiny_engine: HFEngine, requests: list[Request], vanilla: RunResult) -> None:
    capped = [replace(request, max_tokens=3) if index % 3 == 0 else request for index, request in enumerate(requests)]
    for strategy in (Strategy.VANILLA, Strategy.FCR):
        result = run(tiny_engine, capped, [0] * len(capped), replace(BASE, strategy=strategy))
        for index, (record, whole) in enumerate(zip(result.records, vanilla.records, strict=True)):
            if index % 3 == 0:
                assert record.limit == 3 and record.token_ids == whole.token_ids[:3]
                expected = FinishReason.LENGTH if whole.num_tokens >= 3 else whole.finish_reason
                assert record.finish_reason is expected
            else:
                assert record.token_ids == whole.token_ids


def test_sampling_groups_and_per_request_seeds(tiny_engine: HFEngine, requests: list[Request]) -> None:
    mixed = [replace(request, temperature=1.0) if index % 2 else request for index, request in enumerate(requests)]
    options = RunOptions(seed=11)
    first = run(tiny_engine, mixed, None, BASE, options)
    by_index = {index: request.temperature for index, request in enumerate(mixed)}
    for batch in first.batches:
        assert len({by_index[index] for index in batch.request_ids}) == 1, "a batch shares sampling settings"
    regrouped = run(tiny_engine, mixed, None, replace(BASE, batch_size=4), options)
    other = run(tiny_engine, mixed, None, BASE, RunOptions(seed=12))
    assert outputs(first) != outputs(other)
    assert outputs(regrouped) == outputs(first), "a row's sample depends on its seed, not on its batch"
    for index, record in enumerate(first.records):
        if mixed[index].temperature is None:
            assert record.token_ids == other.records[index].token_ids, "greedy rows ignore the seed"


class FlakyMemoryEngine:
    """Wraps an engine and runs out of memory on batches larger than max_rows (as a CUDA OOM would)."""

    batching = Batching.STATIC

    def __init__(self, engine: HFEngine, max_rows: int) -> None:
        self.engine, self.max_rows, self.calls = engine, max_rows, 0

    def encode(self, prompt):  # type: ignore[no-untyped-def]
        return self.engine.encode(prompt)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.engine.decode(token_ids)

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingParams = GREEDY,
        seeds: Sequence[int] | None = None,
    ) -> BatchOutput:
        self.calls += 1
        if len(prompt_ids) > self.max_rows:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.engine.generate(prompt_ids, max_new_tokens, sampling, seeds)


def test_out_of_memory_splits_the_batch(tiny_engine: HFEngine, requests: list[Request], vanilla: RunResult) -> None:
    flaky = FlakyMemoryEngine(tiny_engine, max_rows=2)
    result = run(flaky, requests, None, BASE)
    assert outputs(result) == outputs(vanilla)
    assert result.metrics.oom_splits > 0 and len(result.batches) == len(vanilla.batches)


def test_a_request_out_of_memory_alone_is_an_error_and_the_rest_are_served(
    tiny_engine: HFEngine, requests: list[Request], vanilla: RunResult
) -> None:
    class LongPromptsRunOut(FlakyMemoryEngine):
        """Runs out of memory on any batch holding one of the long prompts (as a huge prompt's prefill would)."""

        def generate(self, prompt_ids, max_new_tokens, sampling=GREEDY, seeds=None):  # type: ignore[no-untyped-def]
            if any(len(ids) > self.max_rows for ids in prompt_ids):
                raise RuntimeError("CUDA out of memory. Tried to allocate 25.60 GiB")
            return self.engine.generate(prompt_ids, max_new_tokens, sampling, seeds)

    longest = max(len(tiny_engine.encode(request.chat())) for request in requests)
    long = {index for index, request in enumerate(requests) if len(tiny_engine.encode(request.chat())) == longest}
    reported: dict[int, object] = {}
    options = RunOptions(on_finished=lambda index, record: reported.setdefault(index, record))
    result = run(LongPromptsRunOut(tiny_engine, longest - 1), requests, None, BASE, options)
    assert long and len(long) < len(requests)
    for index, record in enumerate(result.records):
        if index in long:
            assert record.error_code == "out_of_memory" and "alone" in (record.error or "") and not record.token_ids
        else:
            assert record.error is None and record.token_ids == vanilla.records[index].token_ids
    assert result.metrics.errors == len(long) and result.metrics.oom_splits > 0
    assert sorted(reported) == list(range(len(requests))), "every request is reported once, errors included"


def test_out_of_memory_is_recognised_on_gpu_and_cpu() -> None:
    from serving.runner.static import is_out_of_memory

    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    cpu = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 25600000000 bytes. Error code 12"
    assert is_out_of_memory(RuntimeError(f"[enforce fail at alloc_cpu.cpp:117] data. {cpu}"))
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(RuntimeError("shape mismatch"))


def test_other_errors_are_not_swallowed(tiny_engine: HFEngine, requests: list[Request]) -> None:
    class Broken(FlakyMemoryEngine):
        def generate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run(Broken(tiny_engine, 1), requests[:2], None, BASE)


def test_predictions_are_required_and_checked(tiny_engine: HFEngine, requests: list[Request]) -> None:
    with pytest.raises(SeqschedError, match="needs predicted lengths"):
        run(tiny_engine, requests, None, replace(BASE, strategy=Strategy.FCR))
    with pytest.raises(ValueError, match="predicted lengths for"):
        run(tiny_engine, requests, [1], replace(BASE, strategy=Strategy.FCR))


def test_predictor_time_counts_in_the_run(tiny_engine: HFEngine, requests: list[Request]) -> None:
    result = run(tiny_engine, requests[:4], [5] * 4, replace(BASE, strategy=Strategy.FCR), predictor_s=3.0)
    metrics = result.metrics
    assert metrics.total_s == pytest.approx(metrics.generation_s + 3.0)
    assert metrics.predictor_share == pytest.approx(3.0 / metrics.total_s)
    assert min(record.completion_s for record in result.records) > 3.0


def test_percentile() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    # The simulators' nearest rank: a value that occurred, never an interpolation.
    assert nearest_rank([1.0, 2.0], 99) == 2.0 and nearest_rank([3.0, 1.0, 2.0], 50) == 2.0
    assert nearest_rank(list(range(1, 101)), 99) == 99 and nearest_rank([], 99) == 0.0


@pytest.mark.parametrize("mode", list(RecomputeMode))
def test_simulator_predicts_the_runs_row_steps(
    tiny_engine: HFEngine, requests: list[Request], vanilla: RunResult, noisy: list[int], mode: RecomputeMode
) -> None:
    """serving.policy.simulate models this engine exactly: same failures, same row-steps, given the true lengths."""
    true = [record.num_tokens for record in vanilla.records]
    cfg = replace(BASE, strategy=Strategy.FCR, recompute=mode)
    result = run(tiny_engine, requests, noisy, cfg)
    simulated = simulate(noisy, true, cfg)
    assert sorted(simulated.failed) == [i for i, record in enumerate(result.records) if record.recomputed]
    assert simulated.total.row_steps == result.metrics.row_steps
    assert simulated.recompute.row_steps == result.metrics.recompute_row_steps
    assert simulated.total.output_tokens == result.metrics.generated_tokens
    assert simulate([0] * len(true), true, replace(BASE, strategy=Strategy.VANILLA)).total.row_steps == (
        vanilla.metrics.row_steps
    )
