"""Build the engine a command asked for: vLLM (where installed, the default), or the Hugging Face engine (static
batches or a continuous slot pool, CPU/GPU); and views of a loaded HF model with the other batching (one model in
memory)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from seqsched.engines.api import Batching
from seqsched.engines.config import EngineConfig, EngineKind
from seqsched.errors import OptionError
from seqsched.model_specs import ModelConfig

if TYPE_CHECKING:
    from seqsched.engines.api import Engine
    from seqsched.requests import Request


def build_engine(config: EngineConfig, model: ModelConfig, requests: Sequence[Request] | None = None) -> Engine:
    """Load the model into the chosen engine (a continuous HF engine needs config.slots); with --engine.replay
    (static HF batches: EngineConfig checks), a replay engine for these requests."""
    if model.random_init is not None and config.replay is None:
        raise OptionError("model.random_init", "random weights give no meaningful lengths: add --engine.replay FILE")
    config = config.resolved(random_init=model.random_init is not None)
    if config.kind is EngineKind.VLLM:
        from seqsched.engines.vllm import VLLMEngine

        return VLLMEngine.from_spec(model, config)
    if config.batching is Batching.CONTINUOUS:
        if config.slots is None:
            raise OptionError("engine.slots", "give the pool size of the continuous HF engine")
        from seqsched.engines.hf_continuous import HFContinuousEngine

        return HFContinuousEngine.from_spec(model, config)
    from seqsched.engines.hf import HFEngine

    if config.replay is None:
        return HFEngine.from_spec(model, config)
    if requests is None:
        raise OptionError("engine.replay", "this command cannot replay lengths (bench and serve can)")
    from seqsched.engines.replay import ReplayEngine, lengths_by_chat
    from seqsched.length_files import read_lengths

    # A bad or incomplete lengths file fails before the model loads.
    by_chat = lengths_by_chat(requests, read_lengths(config.replay), config.replay)
    return ReplayEngine(HFEngine.from_spec(model, config), by_chat, config.replay)


def with_batching(
    engine: Engine,
    batching: Batching,
    slots: int | None = None,
    admit_min: int | None = None,
    kv_budget_tokens: int | None = None,
) -> Engine:
    """The same loaded HF model served with the other batching (static <-> a continuous pool of `slots` rows,
    admitting once `admit_min` are free, within `kv_budget_tokens` of KV); engines that cannot switch (vLLM batches
    continuously) come back as they are."""
    from seqsched.engines.hf import HFEngine
    from seqsched.engines.hf_continuous import HFContinuousEngine

    if batching is Batching.STATIC:
        return engine.static if isinstance(engine, HFContinuousEngine) else engine
    if isinstance(engine, HFContinuousEngine):
        same = (slots is None or slots == engine.slots) and (admit_min is None or admit_min == engine.admit_min)
        if same and kv_budget_tokens == engine.kv_budget_tokens:
            return engine
        return HFContinuousEngine(engine.static, slots or engine.slots, admit_min, kv_budget_tokens)
    if isinstance(engine, HFEngine):
        if slots is None:
            raise OptionError("engine.slots", "give the pool size of the continuous HF engine")
        return HFContinuousEngine(engine, slots, admit_min, kv_budget_tokens)
    return engine


def set_torch_threads(threads: int | None) -> None:
    """Fix torch's CPU thread count (None: torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise OptionError("torch_threads", f"must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
