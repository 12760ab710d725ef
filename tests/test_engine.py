"""The HF engine on the tiny model: batch invariance, finish flags, caps, costs, sampling."""

from __future__ import annotations

import pytest

from seqsched.engines.api import FinishReason, SamplingParams
from seqsched.engines.config import EngineConfig
from seqsched.engines.hf import HFEngine
from tests.tiny_model import synthetic_prompts


@pytest.fixture(scope="module")
def prompt_ids(tiny_engine: HFEngine) -> list[list[int]]:
    return [tiny_engine.encode(prompt) for prompt in synthetic_prompts(12, seed=3)]


def test_greedy_alone_equals_padded_batch(tiny_engine: HFEngine, prompt_ids: list[list[int]]) -> None:
    batch = tiny_engine.generate(prompt_ids, 40)
    assert len({len(ids) for ids in prompt_ids}) > 1, "prompts of different lengths, so rows are padded"
    for ids, row in zip(prompt_ids, batch.rows, strict=True):
        alone = tiny_engine.generate([ids], 40).rows[0]
        assert alone.token_ids == row.token_ids
        assert alone.finish_reason is row.finish_reason


def test_rows_stop_on_eos_and_loop_ends_when_all_finish(tiny_engine: HFEngine, prompt_ids: list[list[int]]) -> None:
    batch = tiny_engine.generate(prompt_ids, 200)
    assert all(row.finish_reason is FinishReason.STOP for row in batch.rows)
    longest = max(row.finish_step for row in batch.rows)
    assert batch.decode_steps == longest < 200
    assert batch.row_steps == len(prompt_ids) * batch.decode_steps
    assert tiny_engine.tokenizer.eos_token_id not in [t for row in batch.rows for t in row.token_ids]
    for row in batch.rows:
        assert row.finish_step == row.num_tokens + 1
        assert row.text == tiny_engine.decode(row.token_ids)


def test_cap_marks_rows_length(tiny_engine: HFEngine, prompt_ids: list[list[int]]) -> None:
    full = tiny_engine.generate(prompt_ids, 200)
    capped = tiny_engine.generate(prompt_ids, 5)
    assert capped.decode_steps == 5
    for whole, row in zip(full.rows, capped.rows, strict=True):
        assert row.token_ids == whole.token_ids[:5]
        expected = FinishReason.STOP if whole.num_tokens < 5 else FinishReason.LENGTH
        assert row.finish_reason is expected


def test_evicting_finished_rows_keeps_outputs_and_computes_less(
    tiny_model_dir, tiny_engine: HFEngine, prompt_ids: list[list[int]]
) -> None:
    evicting = HFEngine(tiny_engine.model, tiny_engine.tokenizer, EngineConfig(evict_finished=True))
    static = tiny_engine.generate(prompt_ids, 200)
    evicted = evicting.generate(prompt_ids, 200)
    assert [row.token_ids for row in evicted.rows] == [row.token_ids for row in static.rows]
    assert evicted.row_steps == sum(row.finish_step for row in static.rows) < static.row_steps


def test_sampling_is_reproducible_per_row_seed(tiny_engine: HFEngine, prompt_ids: list[list[int]]) -> None:
    sampling = SamplingParams(temperature=1.5, top_p=0.95)
    first = tiny_engine.generate(prompt_ids, 30, sampling, seeds=list(range(len(prompt_ids))))
    again = tiny_engine.generate(prompt_ids, 30, sampling, seeds=list(range(len(prompt_ids))))
    other = tiny_engine.generate(prompt_ids, 30, sampling, seeds=[seed + 100 for seed in range(len(prompt_ids))])
    assert [r.token_ids for r in first.rows] == [r.token_ids for r in again.rows]
    assert [r.token_ids for r in first.rows] != [r.token_ids for r in other.rows]
    # A row's sample depends on its own seed, not on the rest of the batch.
    alone = tiny_engine.generate(prompt_ids[:1], 30, sampling, seeds=[0])
    assert alone.rows[0].token_ids == first.rows[0].token_ids


def test_sampling_params_are_checked() -> None:
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)


def test_generate_rejects_bad_arguments(tiny_engine: HFEngine, prompt_ids: list[list[int]]) -> None:
    with pytest.raises(ValueError):
        tiny_engine.generate([], 4)
    with pytest.raises(ValueError):
        tiny_engine.generate(prompt_ids, 0)
    with pytest.raises(ValueError):
        tiny_engine.generate(prompt_ids, 4, seeds=[1])


def test_chat_template_and_system_prompt(tiny_engine: HFEngine) -> None:
    ids = tiny_engine.encode("say cat 2 times")
    text = tiny_engine.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nsay cat 2 times<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    with_system = HFEngine(tiny_engine.model, tiny_engine.tokenizer, EngineConfig(system_prompt="be brief"))
    assert tiny_engine.tokenizer.decode(with_system.encode("hi")).startswith("<|im_start|>system\nbe brief")


def test_older_transformers_cache_argument(tiny_engine: HFEngine) -> None:
    """transformers before the `cache` rename (5.17, on the lent GPU) takes `past_key_values` only: every forward
    that passes a cache (generate, prefill ahead of a batch, the continuous pool's prefill and decode) uses it."""
    import torch

    from seqsched.engines.hf import cache_argument
    from seqsched.engines.hf_continuous import HFContinuousEngine

    class OldStyle(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.config = inner.config
            self.generation_config = inner.generation_config
            self.calls = 0

        def forward(
            self,
            input_ids,
            attention_mask=None,
            position_ids=None,
            past_key_values=None,
            use_cache=None,
            logits_to_keep=0,
            **kwargs,
        ):
            assert "cache" not in kwargs and past_key_values is not None
            self.calls += 1
            return self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **{inner_argument: past_key_values},
                **kwargs,
            )

    inner_argument = cache_argument(tiny_engine.model)  # "cache" from transformers 5.2x, as on this machine
    old = OldStyle(tiny_engine.model)
    engine = HFEngine(old, tiny_engine.tokenizer)
    assert engine.cache_argument == "past_key_values"
    prompts = [tiny_engine.encode(text) for text in ("repeat apple 5 times", "say dog 9 times")]
    expected = tiny_engine.generate(prompts, 14)
    got = engine.generate(prompts, 14)
    assert [row.token_ids for row in got.rows] == [row.token_ids for row in expected.rows]
    assert old.calls == got.decode_steps  # one prefill + one forward per later step, each with the cache
    hidden = engine.prefill(prompts, hidden_layers=(1,))
    assert hidden[0][1].shape[0] == len(prompts[0]) and len(engine.prefilled) == 2
    reused = engine.generate(prompts, 14)  # starts from the kept prefills
    assert reused.padded_prompt_tokens == 0
    assert [row.token_ids for row in reused.rows] == [row.token_ids for row in expected.rows]
    engine.drop_prefilled()
    pool = HFContinuousEngine(engine, slots=2)
    rows = pool.submit(prompts, [14, 14])
    assert [timed.row.token_ids for timed in rows] == [row.token_ids for row in expected.rows]
