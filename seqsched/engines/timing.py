"""Micro-timings of the HF engine's building blocks, for the benchmark scripts and the pool's cost model: one decode
step over a (left-padded) cache, and one copy of the pool's KV cache (what every join, compaction and preemption of
seqsched.engines.hf_continuous pays).

Both build random inputs (the cache's contents do not change what a step or a copy costs) and run under
`torch.inference_mode()`.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import DynamicCache

from seqsched.engines.hf import cache_argument
from seqsched.engines.kv_cache import slack_cache


def decode_step_seconds(
    model: torch.nn.Module,
    rows: int,
    columns: int,
    steps: int,
    *,
    padding: float = 0.0,
    cache: DynamicCache | None = None,
) -> float:
    """Median seconds of one decode step over `steps` steps after a prefill of rows x columns random tokens, the
    first `padding` share of the columns masked out (left padding). cache: the cache to fill (default: the in-place
    cache with room for the steps)."""
    if rows < 1 or columns < 1 or steps < 1:
        raise ValueError(f"rows, columns and steps must be >= 1, got {rows}, {columns}, {steps}")
    if not 0.0 <= padding < 1.0:
        raise ValueError(f"padding must be in [0, 1), got {padding}")
    generator = torch.Generator().manual_seed(rows * 1000 + columns)
    ids = torch.randint(0, int(model.config.vocab_size), (rows, columns), generator=generator)
    argument = {cache_argument(model): slack_cache(model.config, steps + 1) if cache is None else cache}
    mask = torch.ones(rows, columns, dtype=torch.long)
    mask[:, : int(padding * columns)] = 0
    times = []
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **argument)
        token = ids[:, -1:]
        for step in range(steps):
            mask = torch.cat([mask, torch.ones(rows, 1, dtype=torch.long)], dim=-1)
            positions = torch.full((rows, 1), columns + step)
            started = time.perf_counter()
            model(input_ids=token, attention_mask=mask, position_ids=positions, use_cache=True, **argument)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def cache_copy_seconds(
    config: object, rows: int, columns: int, repeats: int = 3, dtype: torch.dtype = torch.float32
) -> float:
    """Median seconds to drop one row from a pool cache of rows x columns for a model of this config: each layer's
    buffer gathered into a new one of (rows - 1) x columns, as _Pool.keep does at every compaction and preemption."""
    if rows < 2 or columns < 1 or repeats < 1:
        raise ValueError(f"rows must be >= 2, columns and repeats >= 1, got {rows}, {columns}, {repeats}")
    heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)  # type: ignore[attr-defined]
    dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)  # type: ignore[attr-defined]
    cache = slack_cache(config, reserve=1)
    states = torch.zeros(rows, heads, columns - 1, dim, dtype=dtype)
    for layer in range(len(cache.layers)):
        cache.update(states, states, layer)
    index = torch.arange(1, rows)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            started = time.perf_counter()
            for layer in cache.layers:
                layer.batch_select_indices(index)
            times.append(time.perf_counter() - started)
            for layer in cache.layers:  # back to rows x columns for the next repeat
                layer.batch_select_indices(torch.cat([index.new_zeros(1), torch.arange(rows - 1)]))
    return statistics.median(times)


__all__ = ["cache_copy_seconds", "decode_step_seconds"]
