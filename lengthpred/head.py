"""Beyond the paper: a transformer fine-tuned (LoRA or fully) with a head that outputs a distribution over length
bins; the prediction is a point of that distribution chosen for the metric (its median minimises the MAE).

Answering with a number through the LM head (the paper's form) spends the model's capacity on formatting and
collapses onto a few round answers after short training; a distribution head learns from every example at once
and lets the decision rule, not the training loss, pick the point.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lengthpred.artifact import config_from_dict, config_to_dict, write_manifest
from lengthpred.data import LengthData, TrainTarget
from lengthpred.encoders import MINILM, Pooling
from lengthpred.kinds import PredictorKind
from lengthpred.train import LoraSettings, MetricsCallback, OptimSettings, TrainResult
from seqsched.errors import require, require_at_least

log = logging.getLogger(__name__)

HEAD_FILE = "head.safetensors"
ADAPTER_DIR = "adapter"
ENCODER_DIR = "encoder"


class Finetune(enum.Enum):
    """Which encoder weights train (the head always does)."""

    LORA = "lora"
    FULL = "full"
    FROZEN = "frozen"


class Decision(enum.Enum):
    """Which point of the predicted length distribution is the prediction."""

    MEDIAN = "median"
    """Minimises the expected absolute error (the MAE)."""
    WINDOW = "window"
    """The point with the most probability within +-100 tokens (maximises the expected Acc-100)."""


@dataclass(frozen=True)
class HeadConfig:
    """A fine-tuned encoder with a length-distribution head."""

    encoder: str = MINILM
    """`minilm`, `smollm2` or a Hugging Face folder."""
    finetune: Finetune = Finetune.FULL
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(target_modules=("query", "key", "value", "dense")))
    """Used when finetune is lora; module names depend on the encoder (q_proj... for Llama)."""
    pooling: Pooling = Pooling.MEAN
    query_template: bool = False
    """Feed the prompt as the chat-template length query (for chat LLM encoders) instead of the raw text."""
    max_tokens: int = 256
    bin_width: int = 25
    max_length: int = 512
    """Bins cover 0..max_length; longer targets fall in the last bin."""
    smoothing: float = 1.0
    """Gaussian label smoothing across neighbouring bins, in bins (0: one-hot)."""
    dropout: float = 0.1
    head_learning_rate: float = 1e-3
    """The freshly initialised head learns faster than the pretrained encoder."""
    decision: Decision = Decision.MEDIAN
    target: TrainTarget = TrainTarget.MAX_LENGTH
    optim: OptimSettings = field(default_factory=OptimSettings)
    eval_limit: int = 500
    """Periodic evaluation on the first N validation instructions."""
    batch_size: int = 64
    """Prompts per forward pass at prediction time."""
    members: int = 1
    """Train this many heads (seeds optim.seed, +1, ...) and average their bin distributions (a deep ensemble)."""

    def __post_init__(self) -> None:
        require_at_least(self, 1, "max_tokens", "bin_width", "max_length", "batch_size", "members")
        require_at_least(self, 0, "smoothing", "eval_limit")
        require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.head_learning_rate > 0, "head_learning_rate", f"must be > 0, got {self.head_learning_rate}")


def bin_count(config: HeadConfig) -> int:
    """Number of length bins."""
    return math.ceil(config.max_length / config.bin_width) + 1


def decide(probs: Any, config: HeadConfig) -> Any:
    """Point predictions (numpy, tokens) from bin probabilities (numpy rows)."""
    import numpy as np

    probs = np.asarray(probs, dtype=float)
    width = config.bin_width
    edges = np.arange(probs.shape[1]) * width
    if config.decision is Decision.WINDOW:
        grid = np.arange(0, config.max_length + width, 5)
        centres = edges + width / 2
        inside = np.abs(centres[None, :] - grid[:, None]) <= 100  # (grid, bins)
        return grid[(probs @ inside.T).argmax(axis=1)].astype(float)
    cdf = probs.cumsum(axis=1)
    rows = np.arange(len(probs))
    bin_index = np.minimum((cdf < 0.5).sum(axis=1), probs.shape[1] - 1)
    before = np.where(bin_index > 0, cdf[rows, np.maximum(bin_index - 1, 0)], 0.0)
    inside_share = (0.5 - before) / np.maximum(probs[rows, bin_index], 1e-9)
    return edges[bin_index] + width * np.clip(inside_share, 0.0, 1.0)


def head_inputs(tokenizer: Any, prompts: Sequence[str], config: HeadConfig) -> list[list[int]]:
    """Token ids the encoder sees for each prompt."""
    from lengthpred.encoders import encode_texts
    from lengthpred.sft import query_ids

    if config.query_template:
        return [query_ids(tokenizer, prompt)[-config.max_tokens :] for prompt in prompts]
    return encode_texts(tokenizer, prompts, config.max_tokens)


@dataclass
class HeadPredictor:
    """A LengthPredictor over one Any, or several whose bin distributions are averaged."""

    models: Sequence[Any]
    tokenizer: Any
    config: HeadConfig

    def distribution(self, prompts: Sequence[str]) -> Any:
        """Bin probabilities (numpy, one row per prompt), averaged over the members."""
        import numpy as np
        import torch

        from lengthpred.encoders import pad_batch

        rows = head_inputs(self.tokenizer, prompts, self.config)
        order = sorted(range(len(rows)), key=lambda index: len(rows[index]))
        probs = np.zeros((len(rows), bin_count(self.config)))
        for model in self.models:
            device = next(model.parameters()).device
            was_training = model.training
            model.eval()
            with torch.inference_mode():
                for start in range(0, len(order), self.config.batch_size):
                    chunk = order[start : start + self.config.batch_size]
                    batch = pad_batch([rows[index] for index in chunk], self.tokenizer.pad_token_id)
                    logits = model(**{key: value.to(device) for key, value in batch.items()}).logits
                    probs[chunk] += logits.float().softmax(dim=-1).cpu().numpy() / len(self.models)
            model.train(was_training)
        return probs

    def predict(self, prompts: Sequence[str]) -> list[int]:
        """One predicted length per prompt, in order."""
        if not prompts:
            return []
        points = decide(self.distribution(prompts), self.config)
        return [max(1, round(float(value))) for value in points]


def build_head_model(config: HeadConfig) -> tuple[Any, Any]:
    """The encoder (LoRA-wrapped, fully trainable or frozen) with a fresh head, and its tokenizer."""
    from lengthpred.encoders import load_encoder
    from lengthpred.head_model import LengthHeadModel

    encoder, tokenizer = load_encoder(config.encoder)
    if config.finetune is Finetune.LORA:
        from peft import get_peft_model

        from lengthpred.train import lora_config

        encoder = get_peft_model(encoder, lora_config(config.lora, task_type="FEATURE_EXTRACTION"))
    elif config.finetune is Finetune.FROZEN:
        encoder.requires_grad_(False)
    model = LengthHeadModel(encoder, config)
    return model, tokenizer


def _member_name(index: int) -> str:
    return f"member-{index}"


def train_head(
    config: HeadConfig,
    train: LengthData,
    validation: LengthData | None,
    output_dir: str | Path,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
) -> tuple[Path, TrainResult]:
    """Fine-tune the encoder and head (config.members times, one seed each); save the predictor folder; return it.

    With several members, each trains in output_dir/member-i and is saved there as soon as it is done, so an
    interrupted ensemble resumes with the member it was training.
    """
    import dataclasses

    if config.members < 1:
        raise ValueError(f"members must be at least 1, not {config.members}")
    folder = Path(output_dir) / "predictor"
    if config.members == 1:
        model, tokenizer, result = _train_member(config, train, validation, output_dir, on_metrics, progress)
        save_head([model], tokenizer, config, folder)
        return folder, result
    models, results, tokenizer = [], [], None
    for index in range(config.members):
        member_dir = Path(output_dir) / _member_name(index)
        member_config = dataclasses.replace(
            config, members=1, optim=dataclasses.replace(config.optim, seed=config.optim.seed + index)
        )
        saved = member_dir / "predictor"
        if (saved / "predictor.json").is_file():
            log.info("member %d already trained: %s", index, saved)
            from lengthpred.artifact import read_manifest

            loaded = load_head_predictor(saved, read_manifest(saved))
            models.append(loaded.models[0])
            tokenizer = loaded.tokenizer
            continue

        def member_metrics(step: int, metrics: dict[str, float], index: int = index) -> None:
            if on_metrics is not None:
                on_metrics(step, {f"member{index}_{key}": value for key, value in metrics.items()})

        model, tokenizer, result = _train_member(member_config, train, validation, member_dir, member_metrics, progress)
        save_head([model], tokenizer, member_config, saved)
        models.append(model)
        results.append(result)
    save_head(models, tokenizer, config, folder)
    total = TrainResult(
        steps=sum(result.steps for result in results),
        epochs=sum(result.epochs for result in results),
        examples_seen=sum(result.examples_seen for result in results),
        train_loss=results[-1].train_loss if results else float("nan"),
        wall_s=sum(result.wall_s for result in results),
    )
    return folder, total


def _train_member(
    config: HeadConfig,
    train: LengthData,
    validation: LengthData | None,
    output_dir: str | Path,
    on_metrics: MetricsCallback | None,
    progress: bool,
) -> tuple[Any, Any, TrainResult]:
    from lengthpred.encoders import pad_batch
    from lengthpred.evaluate import compute_metrics
    from lengthpred.train import run_training

    model, tokenizer = build_head_model(config)
    rows = head_inputs(tokenizer, train.prompts, config)
    targets = train.targets(config.target)
    examples = list(zip(rows, targets, strict=True))

    def collate(batch: list[tuple[list[int], int]]) -> dict[str, Any]:
        import torch

        padded = pad_batch([ids for ids, _ in batch], tokenizer.pad_token_id)
        return padded | {"lengths": torch.tensor([length for _, length in batch], dtype=torch.float32)}

    predictor = HeadPredictor([model], tokenizer, config)

    def evaluate_fn(_: Any) -> dict[str, float]:
        assert validation is not None
        limit = min(config.eval_limit, len(validation))
        scored = compute_metrics(predictor.predict(validation.prompts[:limit]), validation.max_lengths[:limit])
        return {"mae": scored.mae, "acc_50": scored.acc_50, "acc_100": scored.acc_100}

    groups = [
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]},
        {"params": list(model.head.parameters()), "lr": config.head_learning_rate},
    ]
    result = run_training(
        model,
        examples,
        collate,
        [len(ids) for ids in rows],
        config.optim,
        output_dir,
        evaluate_fn=evaluate_fn if validation is not None and config.eval_limit > 0 else None,
        on_metrics=on_metrics,
        progress=progress,
        param_groups=groups,
    )
    return model, tokenizer, result


def _save_member(model: Any, tokenizer: Any, config: HeadConfig, folder: Path) -> dict[str, Any]:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in model.head.state_dict().items()}, folder / HEAD_FILE)
    files: dict[str, Any] = {"head_file": HEAD_FILE}
    if config.finetune is Finetune.LORA:
        model.encoder.save_pretrained(folder / ADAPTER_DIR)
        files["adapter"] = ADAPTER_DIR
    elif config.finetune is Finetune.FULL:
        model.encoder.save_pretrained(folder / ENCODER_DIR)
        tokenizer.save_pretrained(folder / ENCODER_DIR)
        files["encoder_dir"] = ENCODER_DIR
    return files


def save_head(models: Sequence[Any], tokenizer: Any, config: HeadConfig, folder: str | Path) -> Path:
    """Write the head(s), the adapter(s) or fine-tuned encoder(s), and the manifest (written last).

    One model: its files sit in the folder itself. Several: one member-i subfolder each, listed in the manifest.
    """
    import shutil

    folder = Path(folder)
    if not models:
        raise ValueError("no model to save")
    settings: dict[str, Any] = {"config": config_to_dict(config)}
    if len(models) == 1:
        settings |= _save_member(models[0], tokenizer, config, folder)
    else:
        names = [_member_name(index) for index in range(len(models))]
        for name, model in zip(names, models, strict=True):
            shutil.rmtree(folder / name, ignore_errors=True)
            settings |= _save_member(model, tokenizer, config, folder / name)  # the same file names for each
        settings["members"] = names
    write_manifest(folder, PredictorKind.HEAD, settings)
    return folder


def _load_member(folder: Path, manifest: dict[str, Any], config: HeadConfig) -> tuple[Any, Any]:
    from safetensors.torch import load_file

    from lengthpred.encoders import load_encoder
    from lengthpred.head_model import LengthHeadModel

    if manifest.get("encoder_dir"):
        encoder, tokenizer = load_encoder(str(folder / manifest["encoder_dir"]))
    else:
        encoder, tokenizer = load_encoder(config.encoder)
    if manifest.get("adapter"):
        from peft import PeftModel

        encoder = PeftModel.from_pretrained(encoder, str(folder / manifest["adapter"])).merge_and_unload()
    model = LengthHeadModel(encoder, config)
    model.head.load_state_dict(load_file(folder / manifest["head_file"]))
    model.to(next(encoder.parameters()).device).eval()
    return model, tokenizer


def load_head_predictor(folder: str | Path, manifest: dict[str, Any]) -> HeadPredictor:
    """A saved head predictor (one model or an ensemble), ready to predict (adapters merged)."""
    folder = Path(folder)
    config = config_from_dict(HeadConfig, manifest["config"])
    members = [folder / name for name in manifest.get("members", [])] or [folder]
    loaded = [_load_member(member, manifest, config) for member in members]
    return HeadPredictor([model for model, _ in loaded], loaded[0][1], config)
