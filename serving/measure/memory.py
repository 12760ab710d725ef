"""The KV-cache budget of a static batch: how many tokens (rows x (prompt + cap)) one batch may hold, from the
model's size per token and this machine's free memory, or given. The paper's VBS table shrinks the batch as its
bin grows (256 rows at 50 tokens, 16 at 250+): a token budget; this makes it explicit (scheduler.token_budget).

No torch at import; the free CUDA memory is asked of torch only when the model runs on CUDA.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqsched.errors import SeqschedError, require
from seqsched.model_specs import Device, DType, ModelConfig

GIB = 1024**3
DTYPE_BYTES = {DType.FLOAT32: 4, DType.BFLOAT16: 2, DType.FLOAT16: 2}


@dataclass(frozen=True)
class MemoryConfig:
    """The KV-cache budget of one batch (`--token_budget N` gives it in tokens directly and wins over these)."""

    kv_budget_gib: float | None = None
    """GiB one batch's KV cache may take; default: kv_memory_fraction of the memory free after loading the model."""
    kv_memory_fraction: float = 0.5
    """Share of the free memory (MemAvailable on CPU, free CUDA memory on GPU) one batch's KV cache may take when
    kv_budget_gib is not given: the rest covers the engine's transient copies (cache growth, attention); 0 turns
    the derived budget off."""

    def __post_init__(self) -> None:
        budget = self.kv_budget_gib
        require(budget is None or budget > 0, "kv_budget_gib", f"must be > 0, got {budget}")
        fraction = self.kv_memory_fraction
        require(0 <= fraction <= 1, "kv_memory_fraction", f"must be in [0, 1], got {fraction}")


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a HF config (multimodal configs nest it)."""
    nested = config.get("text_config")
    return nested if isinstance(nested, Mapping) and "num_hidden_layers" in nested else config


def kv_bytes_per_token(config: Mapping[str, Any], dtype_bytes: int) -> int:
    """Bytes of KV cache per token: layers x KV heads x head dim x 2 (keys and values) x bytes per value."""
    text = text_config(config)
    try:
        layers = int(text["num_hidden_layers"])
        heads = int(text["num_attention_heads"])
        kv_heads = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError) as error:
        raise SeqschedError(f"the model config does not say its KV-cache size ({error!r} missing)") from error
    return layers * kv_heads * head_dim * 2 * dtype_bytes


def model_config_dict(model: ModelConfig) -> dict[str, Any]:
    """The model's config.json (the converted folder for a GGUF spec; a random-weight model's own config)."""
    from seqsched.model_specs import resolve_model_path

    if model.random_init is not None:
        from seqsched.random_models import random_model

        return dict(random_model(model.random_init).config)

    folder = Path(resolve_model_path(model.spec, model.cache_dir))
    path = folder / "config.json"
    if not path.is_file():
        raise SeqschedError(f"model {model.spec!r}: no config.json to size its KV cache (give --token_budget)")
    return json.loads(path.read_text(encoding="utf-8"))


def on_cuda(model: ModelConfig) -> bool:
    """True when the model runs on CUDA (auto: when torch sees a device)."""
    if model.device is Device.CPU:
        return False
    import torch

    return model.device is Device.CUDA or torch.cuda.is_available()


def dtype_bytes(model: ModelConfig, cuda: bool) -> int:
    """Bytes per value of the model's dtype (auto: bfloat16 on CUDA, float32 on CPU)."""
    if model.dtype is DType.AUTO:
        return 2 if cuda else 4
    return DTYPE_BYTES[model.dtype]


def available_bytes(cuda: bool) -> int | None:
    """Free memory now: CUDA's free memory, or the kernel's MemAvailable (None where neither can be read)."""
    if cuda:
        import torch

        return int(torch.cuda.mem_get_info()[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class KVBudget:
    """A batch's KV-cache budget and where it came from."""

    tokens: int | None
    """None: no budget."""
    source: str
    """given, kv_budget_gib, free memory, or why there is none."""
    bytes_per_token: int | None = None
    free_bytes: int | None = None

    def describe(self) -> str:
        """One line for the output."""
        if self.tokens is None:
            return f"no KV-cache budget ({self.source})"
        size = f", {self.bytes_per_token / 1024:.0f} KiB per token" if self.bytes_per_token else ""
        free = f": {self.free_bytes / GIB:.1f} GiB free" if self.free_bytes else ""
        return f"KV-cache budget {self.tokens:,} tokens per batch ({self.source}{free}{size})"

    def as_dict(self) -> dict[str, Any]:
        """For metrics JSON."""
        return dict(self.__dict__)


def kv_budget(token_budget: int | None, memory: MemoryConfig, model: ModelConfig) -> KVBudget:
    """The token budget a run plans with: the given --token_budget, else kv_budget_gib, else a share of the free
    memory, each divided by the model's KV bytes per token."""
    if token_budget is not None:
        return KVBudget(token_budget, "given --token_budget")
    if memory.kv_budget_gib is None and memory.kv_memory_fraction == 0:
        return KVBudget(None, "kv_memory_fraction 0")
    cuda = on_cuda(model)
    per_token = kv_bytes_per_token(model_config_dict(model), dtype_bytes(model, cuda))
    if memory.kv_budget_gib is not None:
        return KVBudget(int(memory.kv_budget_gib * GIB // per_token), "kv_budget_gib", per_token)
    free = available_bytes(cuda)
    if free is None:
        return KVBudget(None, "free memory unknown", per_token)
    share = f"{memory.kv_memory_fraction:.0%} of free memory"
    return KVBudget(max(1, int(free * memory.kv_memory_fraction // per_token)), share, per_token, free)


__all__ = ["KVBudget", "MemoryConfig", "available_bytes", "kv_budget", "kv_bytes_per_token"]
