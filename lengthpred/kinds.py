"""The kinds of length predictor, registered once: each kind's settings field in TrainConfig, how it trains, how
a saved one loads, and what its MLflow pyfunc needs installed. Commands, the on-disk format and the registry
look kinds up here instead of branching on them."""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass
from typing import Any


class PredictorKind(enum.Enum):
    """The kinds of length predictor."""

    LORA = "lora"
    """The paper's: the LLM LoRA-tuned to answer the length query with a number (generative)."""
    PERCEPTION = "perception"
    """Zero-shot perception: the untuned LLM asked the same query (the paper's PO baseline); no training."""
    SKLEARN = "sklearn"
    """scikit-learn regressor on TF-IDF prompt features."""
    EMBEDDING = "embedding"
    """Regressor on frozen sentence embeddings (all-MiniLM-L6-v2)."""
    HEAD = "head"
    """Beyond the paper: an encoder fine-tuned with a length-distribution head (lengthpred.head)."""
    PROBE = "probe"
    """Beyond the paper: the served model's own hidden states at prefill with a small head (lengthpred.probe)."""


TORCH_STACK = ("torch", "transformers", "safetensors", "tokenizers", "peft", "accelerate", "joblib")
"""What every kind that runs a transformer needs installed."""


@dataclass(frozen=True)
class KindSpec:
    """How one kind trains, loads and ships."""

    settings: str
    """The TrainConfig field that holds this kind's settings."""
    train: str
    """`module:function(settings, train, validation, output_dir, on_metrics, progress)` -> (folder, result)."""
    load: str
    """`module:function(folder, manifest) -> LengthPredictor`."""
    requirements: tuple[str, ...]
    """Packages its pyfunc model needs besides mlflow, numpy, pandas, scikit-learn and cloudpickle."""


KINDS: dict[PredictorKind, KindSpec] = {
    PredictorKind.LORA: KindSpec(
        "generative",
        "lengthpred.generative:train_generative",
        "lengthpred.generative:load_generative_predictor",
        (*TORCH_STACK, "gguf", "jinja2"),
    ),
    PredictorKind.PERCEPTION: KindSpec(
        "generative",
        "lengthpred.generative:describe_perception",
        "lengthpred.generative:load_generative_predictor",
        (*TORCH_STACK, "gguf", "jinja2"),
    ),
    PredictorKind.SKLEARN: KindSpec(
        "sklearn", "lengthpred.baselines:fit_sklearn", "lengthpred.baselines:load_regressor", ("scipy", "joblib")
    ),
    PredictorKind.EMBEDDING: KindSpec(
        "embedding", "lengthpred.baselines:fit_embedding", "lengthpred.baselines:load_regressor", TORCH_STACK
    ),
    PredictorKind.HEAD: KindSpec(
        "head", "lengthpred.head:train_head", "lengthpred.head:load_head_predictor", TORCH_STACK
    ),
    PredictorKind.PROBE: KindSpec(
        "probe",
        "lengthpred.probe:train_probe",
        "lengthpred.probe:load_probe_predictor",
        (*TORCH_STACK, "gguf", "jinja2"),
    ),
}


def spec(kind: PredictorKind) -> KindSpec:
    """The registered spec of a kind."""
    return KINDS[kind]


def resolve(target: str) -> Any:
    """Import a spec's `module:function`."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
