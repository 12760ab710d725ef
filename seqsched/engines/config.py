"""What commands say about the engine (no torch): which kind, and each kind's settings."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from seqsched.engines.api import Batching
from seqsched.errors import require


class EngineKind(enum.Enum):
    """Which engine runs the requests."""

    HF = "hf"
    """Our KV-cache loop over a transformers model (CPU or GPU): static batches (seqsched.engines.hf.HFEngine) or a
    continuous slot pool (seqsched.engines.hf_continuous.HFContinuousEngine), see `batching`."""
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
    batching: Batching = Batching.STATIC
    """HF engine: `static` (the paper's engine: a batch runs until its last row stops; the scheduler plans the
    batches) or `continuous` (a pool of `slots` rows: finished rows leave and waiting requests join at every step,
    admitted in the order of `--policy`). vLLM always batches continuously."""
    slots: int | None = None
    """Continuous HF engine: rows decoded at once. None: `serve` and `bench` choose it from the step cost measured on
    this machine (the smallest pool reaching 80% of the most rows/s a step can give; see serving.slots). `bench`
    runs its cb-* rows with it whatever `batching` says."""
    admit_min: int | None = None
    """Continuous HF engine: admit waiting requests once this many slots are free (or none is running), so that
    newcomers share one prefill (a prefill call has a fixed cost). None: slots // 8, at least 1."""
    evict_finished: bool = False
    """HF engine: drop finished rows from the KV cache as they finish (the paper's engine keeps them)."""
    stop_token_ids: tuple[int, ...] = ()
    """Stop tokens besides the model's EOS."""
    system_prompt: str | None = None
    """A system message put before every prompt (None: the chat template's own default)."""
    replay: str | None = None
    """Length replay (hf engine, static batches; `bench` and `serve`): a lengths file (JSONL {id, true|length}, or a
    bench report's vanilla lengths); each request generates exactly its length, EOS ignored. With
    --model.random_init: timing faithful, text not."""
    prefill_store_gib: float = 4.0
    """HF engine: memory for prompts prefilled ahead of their batches (a length probe reading the served
    model's states shares that prefill with generation); prompts beyond it are prefilled again in their batch."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Settings of the vLLM engine (kind vllm)."""

    def __post_init__(self) -> None:
        require(self.slots is None or self.slots >= 1, "engine.slots", f"must be >= 1, got {self.slots}")
        admit_min = self.admit_min
        require(admit_min is None or admit_min >= 1, "engine.admit_min", f"must be >= 1, got {admit_min}")
        require(
            self.replay is None or not self.continuous,
            "engine.replay",
            "length replay runs static batches on the hf engine (--engine.kind hf --engine.batching static)",
        )

    @property
    def continuous(self) -> bool:
        """True when the engine batches continuously (vLLM, or the HF engine's slot pool)."""
        return self.kind is EngineKind.VLLM or self.batching is Batching.CONTINUOUS
