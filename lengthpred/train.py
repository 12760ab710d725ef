"""LoRA training on Accelerate: gradient accumulation, mixed precision, cosine warmup, periodic eval, checkpoints.

The same loop runs on this CPU and under `accelerate launch` on several GPUs. Checkpoints hold only what
training changes (adapter weights, optimizer, scheduler, step), so they stay small for a 7B base model too.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqsched.errors import require, require_at_least
from seqsched.files import atomic_dir
from seqsched.model_specs import ModelConfig

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
"""Written last into a checkpoint folder: a checkpoint without it is incomplete and ignored."""


class Precision(enum.Enum):
    """Mixed precision for training; AUTO is bf16 on a CUDA device that has it, full fp32 elsewhere."""

    AUTO = "auto"
    NO = "no"
    BF16 = "bf16"
    FP16 = "fp16"


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter (the paper: r=8, alpha=16, dropout 0.05 on q/k/v/o)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "r", "alpha")
        require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(bool(self.target_modules), "target_modules", "name at least one module")


@dataclass(frozen=True)
class OptimSettings:
    """Optimizer, schedule and loop settings."""

    epochs: float = 3.0
    """Passes over the training set (fractions allowed)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run the epochs)."""
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.03
    """Share of the steps with a linear warmup before the cosine decay."""
    weight_decay: float = 0.0
    batch_size: int = 8
    """Examples per forward pass on each device."""
    grad_accum: int = 4
    """Forward passes per optimizer step: effective batch = batch_size x grad_accum x devices."""
    max_grad_norm: float = 1.0
    precision: Precision = Precision.AUTO
    eval_every: int = 100
    """Evaluate every N optimizer steps (0: only at the end)."""
    save_every: int = 100
    """Checkpoint every N optimizer steps (0: never); training resumes from the newest one."""
    keep_checkpoints: int = 2
    seed: int = 0
    log_every: int = 10
    """Report the running loss every N steps."""

    def __post_init__(self) -> None:
        require(self.epochs > 0 or self.max_steps > 0, "epochs", f"must be > 0 (or set max_steps), got {self.epochs}")
        require(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        require_at_least(self, 1, "batch_size", "grad_accum", "keep_checkpoints", "log_every")
        require_at_least(self, 0, "max_steps", "weight_decay", "max_grad_norm", "eval_every", "save_every")


@dataclass
class TrainResult:
    """What a training run did."""

    steps: int
    epochs: float
    examples_seen: int
    train_loss: float
    """Mean loss over the last log window."""
    wall_s: float
    resumed_from: int = 0
    """The step training resumed from (0: a fresh start)."""
    history: list[dict[str, float]] = field(default_factory=list)


MetricsCallback = Callable[[int, dict[str, float]], None]
"""Called with (step, metrics) for periodic loss and eval figures (the registry logs them to MLflow)."""


def resolve_precision(precision: Precision) -> str:
    """Accelerate's mixed_precision string for this machine."""
    import torch

    if precision is Precision.AUTO:
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return precision.value


def lora_config(settings: LoraSettings, task_type: str | None = "CAUSAL_LM") -> Any:
    """The peft LoraConfig for these settings."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type=task_type,
    )


def load_base_for_training(model: ModelConfig) -> tuple[Any, Any]:
    """The base causal LM and tokenizer, on the chosen device, in train mode (dropout on)."""
    from seqsched.model_specs import load_model

    loaded = load_model(model)
    loaded.model.config.use_cache = False
    return loaded.model, loaded.tokenizer


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint folder, if any."""
    if not checkpoint_dir.is_dir():
        return None
    complete = [path for path in checkpoint_dir.glob("step-*") if (path / STATE_FILE).is_file()]
    return max(complete, key=lambda path: int(path.name.removeprefix("step-")), default=None)


def _trainable_state(model: Any) -> dict[str, Any]:
    return {name: param.detach().cpu() for name, param in model.named_parameters() if param.requires_grad}


def _save_checkpoint(
    accelerator: Any,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    checkpoint_dir: Path,
    state: dict[str, Any],
    keep: int,
) -> None:
    import torch

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_dir(checkpoint_dir / f"step-{state['step']}") as staging:
            torch.save(_trainable_state(accelerator.unwrap_model(model)), staging / "trainable.pt")
            torch.save(
                {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                staging / "optimizer.pt",
            )
            (staging / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        complete = sorted(
            (path for path in checkpoint_dir.glob("step-*") if (path / STATE_FILE).is_file()),
            key=lambda path: int(path.name.removeprefix("step-")),
        )
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def rng_state() -> dict[str, Any]:
    """Every random generator training draws from: Python's, NumPy's, torch's CPU one and each CUDA device's."""
    import random

    import numpy as np
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Any) -> None:
    """Restore what rng_state() saved (a bare tensor is an older checkpoint's torch CPU state alone)."""
    import random

    import numpy as np
    import torch

    if not isinstance(state, dict):
        torch.set_rng_state(state)
        return
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load_checkpoint(accelerator: Any, model: Any, optimizer: Any, scheduler: Any, path: Path) -> dict[str, Any]:
    import torch

    trainable = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    missing = accelerator.unwrap_model(model).load_state_dict(trainable, strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"checkpoint {path} does not fit the model: unexpected {missing.unexpected_keys[:3]}")
    saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


class _BatchList:
    """A map-style dataset of ready batches (so accelerate can shard batches across devices)."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.batches[index]


def _first(items: list[Any]) -> Any:
    # Each dataset item is already a whole batch; batch_size=1 lets accelerate deal them out to devices.
    return items[0]


def run_training(
    model: Any,
    examples: Sequence[Any],
    collate: Callable[[list[Any]], dict[str, Any]],
    example_lengths: Sequence[int],
    optim: OptimSettings,
    output_dir: str | Path,
    evaluate_fn: Callable[[Any], dict[str, float]] | None = None,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
    accelerator: Any | None = None,
    param_groups: list[dict[str, Any]] | None = None,
) -> TrainResult:
    """Train the model's trainable parameters on examples; `model(**batch).loss` is the loss.

    Resumes from the newest checkpoint in output_dir/checkpoints when there is one (same data and settings).
    param_groups: optimizer parameter groups (e.g. a higher learning rate for a fresh head); default: all
    trainable parameters at optim.learning_rate.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from lengthpred.sft import length_grouped_batches

    if not examples:
        raise ValueError("no training examples")
    output_dir = Path(output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    accelerator = accelerator or Accelerator(
        gradient_accumulation_steps=optim.grad_accum, mixed_precision=resolve_precision(optim.precision)
    )
    set_seed(optim.seed)

    batches_per_epoch = math.ceil(len(examples) / optim.batch_size)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accelerator.num_processes / optim.grad_accum))
    total_steps = optim.max_steps or max(1, math.ceil(steps_per_epoch * optim.epochs))
    epochs_needed = math.ceil(total_steps / steps_per_epoch)

    groups = param_groups or [{"params": [param for param in model.parameters() if param.requires_grad]}]
    optimizer = torch.optim.AdamW(groups, lr=optim.learning_rate, weight_decay=optim.weight_decay)
    # The prepared scheduler steps once per process per optimizer step, hence the factor.
    scheduler = get_cosine_schedule_with_warmup(
        optimizer,
        num_warmup_steps=round(optim.warmup_ratio * total_steps) * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    state = {"step": 0, "epoch": 0, "batches_done": 0, "examples_seen": 0}
    resumed_from = 0
    checkpoint = latest_checkpoint(checkpoint_dir)
    if checkpoint is not None:
        state = _load_checkpoint(accelerator, model, optimizer, scheduler, checkpoint)
        resumed_from = int(state["step"])
        log.info("resuming from %s (step %d of %d)", checkpoint, resumed_from, total_steps)

    started = time.perf_counter()
    history: list[dict[str, float]] = []
    window: list[float] = []
    last_loss = float("nan")
    bar = tqdm(
        total=total_steps, initial=state["step"], unit="step", desc="train", disable=not progress,
        dynamic_ncols=True,
    )  # fmt: skip

    def report(metrics: dict[str, float]) -> None:
        history.append({"step": float(state["step"]), **metrics})
        if not progress:  # without the bar, the log shows progress
            log.info(
                "step %d/%d: %s", state["step"], total_steps, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            )
        if on_metrics is not None and accelerator.is_main_process:
            on_metrics(int(state["step"]), metrics)

    def run_eval() -> None:
        if evaluate_fn is None:
            return
        model.eval()
        with torch.no_grad():
            metrics = evaluate_fn(accelerator.unwrap_model(model))
        model.train()
        report({f"eval_{key}": value for key, value in metrics.items()})
        bar.write(f"step {state['step']}: " + ", ".join(f"{key} {value:.4g}" for key, value in metrics.items()))

    model.train()
    while state["step"] < total_steps and state["epoch"] < epochs_needed:
        order = length_grouped_batches(example_lengths, optim.batch_size, seed=optim.seed + state["epoch"])
        loader = torch.utils.data.DataLoader(
            _BatchList([collate([examples[index] for index in batch]) for batch in order]),
            batch_size=1,
            shuffle=False,
            collate_fn=_first,
        )
        loader = accelerator.prepare(loader)
        if state["batches_done"]:
            loader = accelerator.skip_first_batches(loader, state["batches_done"])
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and optim.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state["batches_done"] += 1
            state["examples_seen"] += int(batch["input_ids"].shape[0]) * accelerator.num_processes
            window.append(float(loss.detach()))
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            bar.update(1)
            last_loss = sum(window) / len(window)
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if state["step"] % optim.log_every == 0 or state["step"] == total_steps:
                report({"train_loss": last_loss, "learning_rate": scheduler.get_last_lr()[0]})
                window = []
            if optim.eval_every and state["step"] % optim.eval_every == 0 and state["step"] < total_steps:
                run_eval()
            if optim.save_every and state["step"] % optim.save_every == 0 and state["step"] < total_steps:
                _save_checkpoint(
                    accelerator, model, optimizer, scheduler, checkpoint_dir, dict(state), optim.keep_checkpoints
                )
            if state["step"] >= total_steps:
                break
        else:
            state["epoch"] += 1
            state["batches_done"] = 0
    bar.close()
    run_eval()
    return TrainResult(
        steps=int(state["step"]),
        epochs=state["examples_seen"] / len(examples),
        examples_seen=int(state["examples_seen"]),
        train_loss=last_loss,
        wall_s=time.perf_counter() - started,
        resumed_from=resumed_from,
        history=history,
    )
