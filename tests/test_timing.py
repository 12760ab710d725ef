"""Micro-timings of the HF engine's building blocks (seqsched.engines.timing) on the tiny model: they run, return
seconds, and refuse shapes that make no sense; the pool measures its copy cost once."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from transformers import DynamicCache  # noqa: E402

from seqsched.engines.hf import HFEngine  # noqa: E402
from seqsched.engines.hf_continuous import COPY_PROBE, HFContinuousEngine  # noqa: E402
from seqsched.engines.timing import cache_copy_seconds, decode_step_seconds  # noqa: E402
from serving.measure.autotune import continuous_model  # noqa: E402


def test_decode_step_seconds_on_both_caches_and_with_padding(tiny_engine: HFEngine) -> None:
    model = tiny_engine.model
    in_place = decode_step_seconds(model, 3, 12, 2)
    padded = decode_step_seconds(model, 3, 12, 2, padding=0.5)
    dynamic = decode_step_seconds(model, 3, 12, 2, cache=DynamicCache(config=model.config))
    assert all(0 < seconds < 10 for seconds in (in_place, padded, dynamic))
    with pytest.raises(ValueError, match="padding"):
        decode_step_seconds(model, 3, 12, 2, padding=1.0)
    with pytest.raises(ValueError, match="rows"):
        decode_step_seconds(model, 0, 12, 2)


def test_cache_copy_seconds_and_the_pools_copy_cost(tiny_engine: HFEngine) -> None:
    config = tiny_engine.model.config
    assert 0 < cache_copy_seconds(config, 4, 16) < 10
    with pytest.raises(ValueError, match="rows"):
        cache_copy_seconds(config, 1, 16)
    pool = HFContinuousEngine(tiny_engine, 8, kv_budget_tokens=400)
    per_slot = pool.copy_slot_s
    assert per_slot > 0 and pool.copy_slot_s == per_slot, "measured once"
    assert COPY_PROBE[0] >= 2
    model = continuous_model(pool)
    assert model is not None and model.copy_slot_s == per_slot and model.reserve == pool.reserve
    assert model.kv_tokens == 400 and model.max_seqs == 8
