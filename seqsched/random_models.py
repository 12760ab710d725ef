"""Models of a real architecture with random weights, for length replay: the compute of a served model without
its weights (nothing to download), made to generate recorded response lengths (seqsched.engines.replay).

A random-weight model's decode step costs what the trained model's does (same shapes, same kernels), so a
replay's timing is faithful; its text is not. Presets are written here, not fetched: `vicuna-7b` is the
LLaMA-7B shape (Llama-2-7B's config.json; Vicuna-7B v1.3 is a fine-tuned LLaMA-7B with the same shapes) and
`smollm2` is SmolLM2-135M-Instruct's config as converted from its GGUF. Any other value is a config.json path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqsched.errors import SeqschedError

REPLAY_NOTE = "length replay: each request generates its recorded length (EOS ignored); timing faithful, text not"

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% set rest = messages[1:] %}"
    "{% else %}{{ '" + VICUNA_SYSTEM.replace("'", "\\'") + "' }}{% set rest = messages %}{% endif %}"
    "{% for message in rest %}{% if message['role'] == 'user' %}{{ ' USER: ' + message['content'] }}"
    "{% else %}{{ ' ASSISTANT: ' + message['content'] + '</s>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)
"""FastChat's `vicuna_v1.1` conversation format (what the paper's Vicuna-7B was prompted with)."""

LLAMA2_7B: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
"""meta-llama/Llama-2-7b-hf's config.json (6.74B parameters)."""

SMOLLM2_135M: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-05,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
"""SmolLM2-135M-Instruct's config as `seqsched.model_specs` converts it from the embedded GGUF (134.5M parameters)."""


@dataclass(frozen=True)
class RandomModel:
    """What a `random_init` value names: the config to build and, for a preset, the served chat format."""

    name: str
    config: dict[str, Any]
    chat_template: str | None = None
    """The conversation format of the model it stands for (None: keep the tokenizer's own)."""


PRESETS: dict[str, RandomModel] = {
    "vicuna-7b": RandomModel("vicuna-7b", LLAMA2_7B, VICUNA_CHAT_TEMPLATE),
    "smollm2": RandomModel("smollm2", SMOLLM2_135M),
}


def random_model(spec: str) -> RandomModel:
    """A preset by name, or a config.json file (or a folder holding one)."""
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise SeqschedError(
            f"--model.random_init {spec!r}: not a preset ({', '.join(PRESETS)}) and no such config.json"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SeqschedError(f"--model.random_init {spec!r}: cannot read {path} ({error})") from error
    if not isinstance(config, dict) or "model_type" not in config:
        raise SeqschedError(f"--model.random_init {spec!r}: {path} is not a model config (no model_type)")
    return RandomModel(str(path), config)


def build_random_model(spec: RandomModel, device: Any, dtype: Any, seed: int = 0) -> Any:
    """The model with freshly initialised weights, allocated straight on `device` (a 7B model never passes
    through host memory), in eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(spec.config)
    model_type = settings.pop("model_type")
    settings.pop("architectures", None)
    config = AutoConfig.for_model(model_type, **settings)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.to(device).eval()  # a no-op unless some buffer was made elsewhere


def parameter_count(model: Any) -> int:
    """Parameters of a model (for reports)."""
    return sum(parameter.numel() for parameter in model.parameters())
