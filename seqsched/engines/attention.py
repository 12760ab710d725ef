"""Grouped-query attention with a padding mask, without copying the keys on CPU.

transformers' `sdpa` attention hands SDPA its grouped key/value heads (`enable_gqa`) only when there is no attention
mask; with one (any left-padded batch: our pool's every step, a static batch of unequal prompts) it first copies
keys and values once per query head group (`repeat_kv`), at every layer of every step. On CPU, SDPA takes the mask
and the grouped heads together, so the copy only costs: SmolLM2-135M (9 query heads, 3 key/value heads), one
decode step of 72 rows on 2 cores, side by side (outputs/runs/pool_step_probe.py): 224 ms with no padding, 534 ms at
350 columns with 40% left padding, as our pool runs. `seqsched_sdpa` is `sdpa` but for that case, where it calls
SDPA with the mask and `enable_gqa=True` (no copy); everything else (GPU, no mask, no groups, position bias, a paged
cache) goes through transformers' own function unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "seqsched_sdpa"
"""The name the attention is registered under (a model's `attn_implementation`)."""


def grouped_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' sdpa_attention_forward, but a masked grouped-query attention on CPU keeps its key/value heads
    grouped (see the module docstring)."""
    groups = int(getattr(module, "num_key_value_groups", 1))
    plain = (
        attention_mask is None
        or groups == 1
        or query.device.type != "cpu"
        or kwargs.get("position_bias") is not None
        or kwargs.get("cache") is not None
        or kwargs.get("output_attentions", False)
    )
    if plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    # With a mask transformers never asks SDPA for its causal flag (the mask holds causality), nor does this.
    output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return output.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register `seqsched_sdpa` (the attention and its mask, sdpa's) with transformers; its name."""
    AttentionInterface.register(ATTENTION, grouped_sdpa_forward)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION


def use_grouped_attention(model: Any) -> bool:
    """Switch a model that runs transformers' `sdpa` attention to `seqsched_sdpa`; False (unchanged) for any other
    attention (eager, flash kernels, a model without the attention interface)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    model.set_attn_implementation(register())
    return True


__all__ = ["ATTENTION", "grouped_sdpa_forward", "register", "use_grouped_attention"]
