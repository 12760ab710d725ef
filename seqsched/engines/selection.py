"""Build the engine a command asked for: the Hugging Face engine (CPU/GPU) or vLLM (extra `gpu`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from seqsched.engines.config import EngineConfig, EngineKind
from seqsched.errors import OptionError
from seqsched.model_specs import ModelConfig

if TYPE_CHECKING:
    from seqsched.engines.api import Engine
    from seqsched.requests import Request


def build_engine(config: EngineConfig, model: ModelConfig, requests: Sequence[Request] | None = None) -> Engine:
    """Load the model into the chosen engine; with --engine.replay, a replay engine for these requests."""
    if model.random_init is not None and config.replay is None:
        raise OptionError("model.random_init", "random weights give no meaningful lengths: add --engine.replay FILE")
    if config.kind is EngineKind.VLLM:
        if config.replay is not None:
            raise OptionError("engine.replay", "length replay runs on the hf engine (--engine.kind hf)")
        from seqsched.engines.vllm import VLLMEngine

        return VLLMEngine.from_spec(model, config.vllm)
    from seqsched.engines.hf import HFEngine

    engine = HFEngine.from_spec(model, config)
    if config.replay is None:
        return engine
    from seqsched.engines.replay import ReplayEngine
    from seqsched.length_files import read_lengths

    if requests is None:
        raise OptionError("engine.replay", "this command cannot replay lengths (bench and serve can)")
    return ReplayEngine.for_requests(engine, requests, read_lengths(config.replay), config.replay)


def set_torch_threads(threads: int | None) -> None:
    """Fix torch's CPU thread count (None: torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise OptionError("torch_threads", f"must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
