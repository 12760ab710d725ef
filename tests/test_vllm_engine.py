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


def test_submit_checks_lengths(fake_engine: VLLMEngine) -> None:
    with pytest.raises(ValueError):
        fake_engine.submit([[1, 2]], [4, 4])


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
