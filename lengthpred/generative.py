"""The generative predictors: the LLM asked the length query, zero-shot or LoRA-tuned on the labels (the paper)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lengthpred.artifact import write_manifest
from lengthpred.data import LengthData, TrainTarget
from lengthpred.kinds import PredictorKind
from lengthpred.perception import PerceptionConfig, PerceptionPredictor
from lengthpred.train import LoraSettings, MetricsCallback, OptimSettings, TrainResult
from seqsched.errors import require_at_least
from seqsched.model_specs import SMOLLM2, ModelConfig

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


@dataclass(frozen=True)
class GenerativeConfig:
    """The LLM answering the length query: its base model, LoRA adapter, training and answer settings."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(spec=SMOLLM2))
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    target: TrainTarget = TrainTarget.LABEL
    """The number the model learns to answer (the paper: the bucketed label)."""
    eval_limit: int = 64
    """Periodic evaluation asks the query on the first N validation instructions (0: eval loss only)."""
    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    """How the query is answered at prediction time (batch size, answer tokens, fallback)."""

    def __post_init__(self) -> None:
        require_at_least(self, 0, "eval_limit")


def _engine(model: Any, tokenizer: Any) -> Any:
    from seqsched.engines.hf import HFEngine

    return HFEngine(model, tokenizer)


def _eval_fn(
    tokenizer: Any, validation: LengthData, config: GenerativeConfig, pad_id: int
) -> Any:  # -> Callable[[Any], dict[str, float]]
    from lengthpred.evaluate import compute_metrics
    from lengthpred.sft import build_examples, collate

    count = min(len(validation), max(config.eval_limit, 1) * 4)
    examples = build_examples(tokenizer, validation.prompts[:count], validation.targets(config.target)[:count])

    def evaluate(model: Any) -> dict[str, float]:
        import torch

        device = next(model.parameters()).device
        total, tokens = 0.0, 0
        for start in range(0, len(examples), config.optim.batch_size):
            batch = collate(examples[start : start + config.optim.batch_size], pad_id)
            batch = {key: value.to(device) for key, value in batch.items()}
            answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * answer_tokens
            tokens += answer_tokens
        metrics = {"loss": total / max(tokens, 1)}
        if config.eval_limit > 0:
            predictor = PerceptionPredictor(_engine(model, tokenizer), config.perception)
            limit = min(config.eval_limit, len(validation))
            with torch.inference_mode():
                predicted = predictor.predict(validation.prompts[:limit])
            scored = compute_metrics(predicted, validation.max_lengths[:limit])
            metrics |= {"mae": scored.mae, "acc_100": scored.acc_100, "unparsed": float(predictor.unparsed)}
        return metrics

    return evaluate


def train_generative(
    config: GenerativeConfig,
    train: LengthData,
    validation: LengthData | None,
    output_dir: str | Path,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
) -> tuple[Path, TrainResult]:
    """LoRA-tune the LLM to answer the length query with the label; save the predictor folder; return it."""
    from peft import get_peft_model

    from lengthpred.sft import build_examples, collate, describe
    from lengthpred.train import load_base_for_training, lora_config, run_training

    output_dir = Path(output_dir)
    model, tokenizer = load_base_for_training(config.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = build_examples(tokenizer, train.prompts, train.targets(config.target))
    log.info("%d SFT examples; the first: %s", len(examples), describe(examples[0], tokenizer))
    model = get_peft_model(model, lora_config(config.lora))
    evaluate_fn = _eval_fn(tokenizer, validation, config, pad_id) if validation is not None else None
    result = run_training(
        model,
        examples,
        lambda batch: collate(batch, pad_id),
        [len(example) for example in examples],
        config.optim,
        output_dir,
        evaluate_fn=evaluate_fn,
        on_metrics=on_metrics,
        progress=progress,
    )
    folder = output_dir / "predictor"
    model.save_pretrained(folder / ADAPTER_DIR)
    save_generative(folder, config, PredictorKind.LORA)
    return folder, result


def describe_perception(
    config: GenerativeConfig, train: LengthData, validation: LengthData | None, output_dir: str | Path, *_: Any
) -> tuple[Path, None]:
    """The perception kind's 'trainer': nothing to learn, the manifest names the base model and the query."""
    return save_generative(Path(output_dir) / "predictor", config, PredictorKind.PERCEPTION), None


def save_generative(folder: str | Path, config: GenerativeConfig, kind: PredictorKind) -> Path:
    """Write the manifest of a generative predictor (the adapter, for LORA, is saved beside it)."""
    settings: dict[str, Any] = {
        "base_model": config.model.spec,
        "perception": asdict(config.perception),
        "target": config.target.value,
    }
    if kind is PredictorKind.LORA:
        settings["adapter"] = ADAPTER_DIR
        settings["lora"] = asdict(config.lora)
    write_manifest(folder, kind, settings)
    return Path(folder)


def load_generative_predictor(folder: str | Path, manifest: dict[str, Any]) -> PerceptionPredictor:
    """The LLM (with the adapter merged in, for LORA) answering the length query."""
    from seqsched.engines.hf import HFEngine
    from seqsched.model_specs import load_model

    loaded = load_model(ModelConfig(spec=manifest["base_model"]))
    model = loaded.model
    if manifest.get("adapter"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(Path(folder) / manifest["adapter"]))
        model = model.merge_and_unload().eval()
    return PerceptionPredictor(HFEngine(model, loaded.tokenizer), PerceptionConfig(**manifest["perception"]))
