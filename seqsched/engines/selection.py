"""Build the engine a command asked for: the Hugging Face engine (CPU/GPU) or vLLM (extra `gpu`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from seqsched.engines.config import EngineConfig, EngineKind
from seqsched.errors import OptionError
from seqsched.model_specs import ModelConfig

if TYPE_CHECKING:
    from seqsched.engines.api import Engine


def build_engine(config: EngineConfig, model: ModelConfig) -> Engine:
    """Load the model into the chosen engine."""
    if config.kind is EngineKind.VLLM:
        from seqsched.engines.vllm import VLLMEngine

        return VLLMEngine.from_spec(model, config.vllm)
    from seqsched.engines.hf import HFEngine

    return HFEngine.from_spec(model, config)


def set_torch_threads(threads: int | None) -> None:
    """Fix torch's CPU thread count (None: torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise OptionError("torch_threads", f"must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
