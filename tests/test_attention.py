"""seqsched_sdpa: transformers' sdpa attention without the key/value copy for a masked grouped-query attention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from seqsched.engines.attention import ATTENTION, grouped_sdpa_forward, use_grouped_attention


class _Module(torch.nn.Module):
    """What the attention functions read of a model's attention layer."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _inputs(rows: int, queries: int, columns: int, padding: list[int], float_mask: bool):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(rows, 6, queries, 16, generator=generator)
    key = torch.randn(rows, 2, columns, 16, generator=generator)
    value = torch.randn(rows, 2, columns, 16, generator=generator)
    # Left padding per row, and causality among the last `queries` columns (a prefill, or one decode step).
    allowed = torch.ones(rows, 1, queries, columns, dtype=torch.bool)
    for row, pad in enumerate(padding):
        allowed[row, :, :, :pad] = False
    for offset in range(queries):
        allowed[:, :, offset, columns - queries + offset + 1 :] = False
    if not float_mask:
        return query, key, value, allowed
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return query, key, value, additive


@pytest.mark.parametrize("float_mask", [False, True])
@pytest.mark.parametrize("queries", [1, 5])
def test_grouped_attention_equals_transformers_sdpa_with_a_padding_mask(queries: int, float_mask: bool) -> None:
    module = _Module(groups=3)
    query, key, value, mask = _inputs(4, queries, 12, [0, 3, 6, 2], float_mask)
    theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    ours, _ = grouped_sdpa_forward(module, query, key, value, mask, scaling=0.25)
    assert ours.shape == theirs.shape == (4, queries, 6, 16)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_grouped_attention_without_a_mask_is_transformers_own() -> None:
    module = _Module(groups=3)
    query, key, value, _ = _inputs(2, 4, 4, [0, 0], float_mask=False)
    theirs, _ = sdpa_attention_forward(module, query, key, value, None, is_causal=True)
    ours, _ = grouped_sdpa_forward(module, query, key, value, None, is_causal=True)
    assert torch.equal(ours, theirs)


def test_a_loaded_model_uses_it_and_generates_the_same_tokens(tiny_model_dir: Path) -> None:
    """Loading switches a grouped-query model from sdpa to seqsched_sdpa; a left-padded batch generates the same
    greedy tokens either way."""
    from seqsched.engines.hf import HFEngine

    engine = HFEngine.from_spec(str(tiny_model_dir))
    model = engine.model
    assert model.config._attn_implementation == ATTENTION
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # the tiny model groups its heads
    prompts = [engine.encode("say cat 2 times"), engine.encode("apple " * 9), engine.encode("hi")]
    ours = engine.generate(prompts, max_new_tokens=12)
    model.set_attn_implementation("sdpa")  # this test's own engine: no other test sees the switch
    theirs = engine.generate(prompts, max_new_tokens=12)
    assert [row.token_ids for row in ours.rows] == [row.token_ids for row in theirs.rows]
    assert use_grouped_attention(model) and model.config._attn_implementation == ATTENTION
    model.set_attn_implementation("eager")
    assert not use_grouped_attention(model) and model.config._attn_implementation == "eager"  # only sdpa is replaced
