"""What commands say about the engine (no torch): which kind, and each kind's settings."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from seqsched.errors import require


class EngineKind(enum.Enum):
    """Which engine runs the requests."""

    HF = "hf"
    """seqsched.engines.hf.HFEngine: our KV-cache loop over a transformers model (CPU or GPU), static batches."""
    VLLM = "vllm"
    """seqsched.engines.vllm.VLLMEngine: vLLM, continuous batching with priorities (CUDA and `pip install .[gpu]`)."""


@dataclass(frozen=True)
class VLLMConfig:
    """How the vLLM engine is started."""

    gpu_memory_utilization: float = 0.85
    max_num_seqs: int = 256
    """Most sequences vLLM runs at once (its continuous batch)."""
    max_model_len: int | None = None
    enforce_eager: bool = False
    """Skip CUDA graphs (faster start, slower decode)."""
    seed: int = 0

    def __post_init__(self) -> None:
        require(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")
        require(self.max_num_seqs >= 1, "max_num_seqs", f"must be >= 1, got {self.max_num_seqs}")


@dataclass(frozen=True)
class EngineConfig:
    """The engine: its kind and settings (`--engine.kind vllm`, `--engine.evict_finished true`)."""

    kind: EngineKind = EngineKind.HF
    evict_finished: bool = False
    """HF engine: drop finished rows from the KV cache as they finish (the paper's engine keeps them)."""
    stop_token_ids: tuple[int, ...] = ()
    """Stop tokens besides the model's EOS."""
    system_prompt: str | None = None
    """A system message put before every prompt (None: the chat template's own default)."""
    prefill_store_gib: float = 4.0
    """HF engine: memory for prompts prefilled ahead of their batches (a length probe reading the served
    model's states shares that prefill with generation); prompts beyond it are prefilled again in their batch."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Settings of the vLLM engine (kind vllm)."""
