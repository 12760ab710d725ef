"""Pick the generation engine a command serves with: the Hugging Face engine (CPU/GPU) or vLLM (extra `gpu`)."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from serving.llm import ModelConfig

if TYPE_CHECKING:
    from serving.engine_api import Engine


class EngineKind(enum.Enum):
    """Which engine runs the batches."""

    HF = "hf"
    """serving.engine.HFEngine: our KV-cache loop over a transformers model (CPU or GPU)."""
    VLLM = "vllm"
    """serving.vllm_engine.VLLMEngine: vLLM with priority scheduling (needs CUDA and `pip install .[gpu]`)."""


def build_engine(kind: EngineKind, model: ModelConfig, *, evict_finished: bool = False) -> Engine:
    """Load the model into the chosen engine."""
    if kind is EngineKind.VLLM:
        from serving.vllm_engine import VLLMEngine

        return VLLMEngine.from_spec(model)
    from serving.engine import EngineConfig, HFEngine

    return HFEngine.from_spec(model, EngineConfig(evict_finished=evict_finished))


def set_torch_threads(threads: int | None) -> None:
    """Fix torch's CPU thread count (None: torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"torch_threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
