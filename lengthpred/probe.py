"""The served model perceives its own length: a small head on the served LLM's own hidden states at prefill.

The prompt goes through the served model exactly as serving sends it (chat template, left padding); the states of
a few layers at the last prompt token (and/or averaged over the prompt) are the features; a small MLP maps them
to a distribution over length bins, trained with label smoothing on the served model's own labels. The forward
stops after the deepest layer used, so a probe on middle layers costs part of a prefill. A ProbePredictor can
share the serving engine's model (`attach`), so no second copy is loaded.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lengthpred.artifact import config_from_dict, config_to_dict, write_manifest
from lengthpred.data import LengthData, TrainTarget
from lengthpred.kinds import PredictorKind
from lengthpred.train import TrainResult
from seqsched.errors import require
from seqsched.model_specs import SMOLLM2, ModelConfig

log = logging.getLogger(__name__)

HEAD_FILE = "probe_head.safetensors"


class ProbePooling(enum.Enum):
    """Which token states become a layer's feature vector."""

    LAST = "last"
    """The last prompt token: the state right before the model would answer."""
    MEAN = "mean"
    """The average over the prompt's tokens."""
    BOTH = "both"
    """Both, concatenated."""


class ProbeCombine(enum.Enum):
    """How the layers read become a prediction."""

    CONCAT = "concat"
    """One head on all layers' features concatenated."""
    AVERAGE = "average"
    """One head per layer; their bin distributions are averaged (an ensemble over depth)."""


@dataclass(frozen=True)
class ProbeConfig:
    """A head on the served model's own hidden states (the served model perceives its own response length)."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(spec=SMOLLM2))
    """The served model: features come from its forward pass over the prompt as served (chat template)."""
    layers: tuple[int, ...] = (10, 15, 20)
    """Hidden-state indices to read (0 = embeddings, 1..L = after each decoder layer); the forward stops after
    the deepest one."""
    pooling: ProbePooling = ProbePooling.LAST
    combine: ProbeCombine = ProbeCombine.CONCAT
    seeds: int = 1
    """Heads per layer group, each from another seed; their distributions are averaged."""
    hidden: int = 256
    """Width of the MLP's hidden layer (0: a linear head)."""
    dropout: float = 0.2
    bin_width: int = 16
    max_length: int = 256
    """Bins cover 0..max_length (the serving limit); longer targets fall in the last bin."""
    smoothing: float = 1.0
    """Gaussian label smoothing across neighbouring bins, in bins (0: one-hot)."""
    epochs: int = 60
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    """Examples per optimizer step."""
    early_stop_fraction: float = 0.1
    """Share of the training set held out to pick the best epoch (0: keep the last epoch)."""
    target: TrainTarget = TrainTarget.MAX_LENGTH
    """What to learn: the max over samples (the paper's label), or greedy_length for greedy serving."""
    quantile: float = 0.5
    """The point of the predicted distribution reported as the length: 0.5 = median (minimises MAE)."""
    feature_batch_size: int = 16
    """Prompts per forward pass when reading features."""
    seed: int = 0

    def __post_init__(self) -> None:
        require(bool(self.layers) and min(self.layers) >= 0, "layers", f"give hidden-state indices >= 0: {self.layers}")
        require(self.bin_width >= 1, "bin_width", f"must be >= 1, got {self.bin_width}")
        require(self.max_length >= self.bin_width, "max_length", f"must be >= bin_width, got {self.max_length}")
        require(0 < self.quantile < 1, "quantile", f"must be in (0, 1), got {self.quantile}")
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(0 <= self.early_stop_fraction < 1, "early_stop_fraction", "must be in [0, 1)")
        require(self.seeds >= 1, "seeds", f"must be >= 1, got {self.seeds}")


def bin_count(config: ProbeConfig) -> int:
    """Number of length bins: 0..max_length in bin_width steps, plus one for 'at the limit or beyond'."""
    return math.ceil(config.max_length / config.bin_width) + 1


class StopForward(Exception):
    """Raised by a hook after the deepest layer the probe reads: the rest of the forward is not needed."""


def _decoder_layers(model: Any) -> Any:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers found (model.model.layers)")
    return layers


def read_features(
    model: Any, prompt_ids: Sequence[Sequence[int]], config: ProbeConfig, pad_id: int
) -> Any:  # numpy (prompts, features)
    """The probe's features for prompts given as token ids (served order kept), batched by length."""
    import numpy as np
    import torch

    layers = _decoder_layers(model)
    deepest = max(config.layers)
    if deepest > len(layers):
        raise ValueError(f"layer {deepest} asked for, the model has {len(layers)}")
    device = next(model.parameters()).device
    captured: dict[int, Any] = {}

    final_norm = getattr(getattr(model, "model", model), "norm", None)

    def keep(index: int) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            state = output[0] if isinstance(output, tuple) else output
            if index == len(layers) and final_norm is not None:
                state = final_norm(state)  # as transformers reports the last hidden state: normed
            captured[index] = state
            if index == deepest:
                raise StopForward

        return hook

    handles = [layers[index - 1].register_forward_hook(keep(index)) for index in config.layers if index >= 1]
    order = sorted(range(len(prompt_ids)), key=lambda row: len(prompt_ids[row]))
    chunks: list[tuple[list[int], Any]] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(order), config.feature_batch_size):
                rows = order[start : start + config.feature_batch_size]
                width = max(len(prompt_ids[row]) for row in rows)
                input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for slot, row in enumerate(rows):
                    ids = list(prompt_ids[row])
                    input_ids[slot, width - len(ids) :] = torch.tensor(ids)
                    mask[slot, width - len(ids) :] = 1
                input_ids, mask = input_ids.to(device), mask.to(device)
                positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
                captured.clear()
                if 0 in config.layers:
                    captured[0] = model.get_input_embeddings()(input_ids)
                if deepest >= 1:
                    with contextlib.suppress(StopForward):
                        model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False)
                chunks.append((rows, _pool([captured[index] for index in config.layers], mask, config.pooling)))
    finally:
        for handle in handles:
            handle.remove()
    features = np.zeros((len(prompt_ids), chunks[0][1].shape[1]), dtype=np.float32) if chunks else np.zeros((0, 0))
    for rows, values in chunks:
        features[rows] = values
    return features


def _pool(states: Sequence[Any], mask: Any, pooling: ProbePooling) -> Any:
    import torch

    parts = []
    weights = mask.unsqueeze(-1).float()
    for state in states:
        state = state.float()
        if pooling in (ProbePooling.LAST, ProbePooling.BOTH):
            parts.append(state[:, -1, :])  # left padding: the last position is every row's last prompt token
        if pooling in (ProbePooling.MEAN, ProbePooling.BOTH):
            parts.append((state * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0))
    return torch.cat(parts, dim=-1).cpu().numpy()


def features_from_hidden(hidden: Sequence[dict[int, Any]], config: ProbeConfig) -> Any:  # numpy
    """The probe's features from unpadded per-prompt hidden states (layer -> (length, hidden)), as a serving
    engine's prefill returns them (seqsched.engines.hf.HFEngine.prefill)."""
    import numpy as np
    import torch

    rows = []
    for states in hidden:
        parts = []
        for layer in config.layers:
            state = states[layer].float()
            if config.pooling in (ProbePooling.LAST, ProbePooling.BOTH):
                parts.append(state[-1])
            if config.pooling in (ProbePooling.MEAN, ProbePooling.BOTH):
                parts.append(state.mean(dim=0))
        rows.append(torch.cat(parts).cpu().numpy())
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def soft_targets(lengths: Any, config: ProbeConfig) -> Any:  # torch (rows, bins)
    """Per-row target distributions over bins: the true bin, smoothed over its neighbours."""
    import torch

    bins = bin_count(config)
    index = (lengths.float() / config.bin_width).floor().clamp(max=bins - 1)
    if config.smoothing <= 0:
        return torch.nn.functional.one_hot(index.long(), bins).float()
    grid = torch.arange(bins).float()
    weights = torch.exp(-0.5 * ((grid.unsqueeze(0) - index.unsqueeze(1)) / config.smoothing) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


def build_head(features: int, config: ProbeConfig) -> Any:  # torch.nn.Module
    """Standardisation (buffers filled by training) + an MLP to bin logits."""
    import torch

    class ProbeHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(features))
            self.register_buffer("scale", torch.ones(features))
            bins = bin_count(config)
            if config.hidden > 0:
                self.net = torch.nn.Sequential(
                    torch.nn.Dropout(config.dropout),
                    torch.nn.Linear(features, config.hidden),
                    torch.nn.GELU(),
                    torch.nn.Dropout(config.dropout),
                    torch.nn.Linear(config.hidden, bins),
                )
            else:
                self.net = torch.nn.Sequential(torch.nn.Dropout(config.dropout), torch.nn.Linear(features, bins))

        def forward(self, x: Any) -> Any:
            return self.net((x - self.mean) / self.scale)

    return ProbeHead()


def member_slices(features: int, config: ProbeConfig) -> list[tuple[int, int]]:
    """The feature columns each ensemble member reads: all of them (concat) or one layer's each (average),
    repeated once per seed."""
    if config.combine is ProbeCombine.CONCAT:
        groups = [(0, features)]
    else:
        width = features // len(config.layers)
        groups = [(index * width, (index + 1) * width) for index in range(len(config.layers))]
    return [group for group in groups for _ in range(config.seeds)]


def build_probe_model(features: int, config: ProbeConfig) -> Any:  # torch.nn.Module
    """The members' heads behind one module whose output is the log of their averaged bin distributions."""
    import torch

    slices = member_slices(features, config)

    class ProbeEnsemble(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.slices = slices
            self.members = torch.nn.ModuleList(build_head(end - start, config) for start, end in slices)

        def forward(self, x: Any) -> Any:
            probs = sum(
                member(x[:, start:end]).softmax(dim=-1)
                for member, (start, end) in zip(self.members, self.slices, strict=True)
            )
            return (probs / len(self.members)).clamp(min=1e-12).log()

    return ProbeEnsemble()


def fit_probe(features: Any, targets: Sequence[int], config: ProbeConfig, on_epoch: Any = None) -> tuple[Any, dict]:
    """Train every member on its columns (seed config.seed + its index) and put them behind one module."""
    model = build_probe_model(features.shape[1], config)
    summaries = []
    for index, (start, end) in enumerate(model.slices):
        member_config = replace(config, seed=config.seed + index)
        hook = None if on_epoch is None or index else on_epoch  # the first member's curve is enough to log
        head, summary = fit_head(features[:, start:end], targets, member_config, hook)
        model.members[index].load_state_dict(head.state_dict())
        summaries.append(summary)
    model.eval()
    return model, {
        "members": len(summaries),
        "best_epoch": summaries[0]["best_epoch"],
        "history": summaries[0]["history"],
        "best_stop_mae": [summary["best_stop_mae"] for summary in summaries],
    }


def quantile_points(probs: Any, config: ProbeConfig, quantile: float | None = None) -> Any:  # numpy
    """The `quantile` (default: the config's) of each row's bin distribution, interpolated inside the bin."""
    import numpy as np

    q = config.quantile if quantile is None else quantile
    probs = np.asarray(probs, dtype=float)
    cdf = probs.cumsum(axis=1)
    rows = np.arange(len(probs))
    bin_index = np.minimum((cdf < q).sum(axis=1), probs.shape[1] - 1)
    before = np.where(bin_index > 0, cdf[rows, np.maximum(bin_index - 1, 0)], 0.0)
    inside = (q - before) / np.maximum(probs[rows, bin_index], 1e-9)
    points = bin_index * config.bin_width + config.bin_width * np.clip(inside, 0.0, 1.0)
    return np.minimum(points, config.max_length)


@dataclass
class ProbePredictor:
    """A LengthPredictor over the served model's hidden states and a trained head."""

    head: Any
    config: ProbeConfig
    model: Any = None
    """The served model (loaded lazily from config.model, or shared with the serving engine by attach())."""
    tokenizer: Any = None
    feature_s: float = 0.0
    """Seconds spent reading features (the forward through the served model's first layers), all calls."""

    def attach(self, model: Any, tokenizer: Any) -> None:
        """Read features through an already loaded copy of the served model (the serving engine's)."""
        self.model, self.tokenizer = model, tokenizer

    def _ensure_model(self) -> None:
        if self.model is None:
            from seqsched.model_specs import shared_model

            loaded = shared_model(self.config.model)
            self.model, self.tokenizer = loaded.model, loaded.tokenizer

    def prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt as the served model sees it (chat template, generation prompt)."""
        from seqsched.engines.api import encode_chat

        self._ensure_model()
        return [encode_chat(self.tokenizer, prompt) for prompt in prompts]

    def distribution_from_ids(self, prompt_ids: Sequence[Sequence[int]]) -> Any:
        """Bin probabilities (numpy rows) for prompts given as served token ids."""
        import torch

        self._ensure_model()
        started = time.perf_counter()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        features = read_features(self.model, prompt_ids, self.config, pad)
        self.feature_s += time.perf_counter() - started
        self.head.eval()
        with torch.inference_mode():
            logits = self.head(torch.from_numpy(features))
        return logits.float().softmax(dim=-1).numpy()

    def distribution_from_hidden(self, hidden: Sequence[dict[int, Any]]) -> Any:
        """Bin probabilities from hidden states a serving engine's prefill already read (no forward here)."""
        import torch

        features = features_from_hidden(hidden, self.config)
        self.head.eval()
        with torch.inference_mode():
            return self.head(torch.from_numpy(features)).float().softmax(dim=-1).numpy()

    def lengths(self, probs: Any, quantile: float | None = None) -> list[int]:
        """Predicted lengths at a quantile of each distribution (default: the configured one)."""
        return [max(1, round(float(value))) for value in quantile_points(probs, self.config, quantile)]

    def distribution(self, prompts: Sequence[str]) -> Any:
        """Bin probabilities (numpy, one row per prompt)."""
        return self.distribution_from_ids(self.prompt_ids(prompts))

    def predict(self, prompts: Sequence[str]) -> list[int]:
        """One predicted length per prompt (the configured quantile of its distribution)."""
        if not prompts:
            return []
        return self.lengths(self.distribution(prompts))


def fit_head(features: Any, targets: Sequence[int], config: ProbeConfig, on_epoch: Any = None) -> tuple[Any, dict]:
    """Train the head on feature rows; returns the head (best epoch on the early-stop split) and a summary."""
    import numpy as np
    import torch

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    y = torch.tensor(list(targets), dtype=torch.float32)
    order = rng.permutation(len(y))
    held = int(len(y) * config.early_stop_fraction)
    stop_rows, train_rows = order[:held], order[held:]
    head = build_head(x.shape[1], config)
    head.mean.copy_(x[train_rows].mean(dim=0))
    head.scale.copy_(x[train_rows].std(dim=0).clamp(min=1e-4))
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    targets_soft = soft_targets(y, config)
    best: tuple[float, dict[str, Any]] | None = None
    history = []
    for epoch in range(config.epochs):
        head.train()
        shuffled = rng.permutation(train_rows)
        total = 0.0
        for start in range(0, len(shuffled), config.batch_size):
            rows = torch.from_numpy(shuffled[start : start + config.batch_size])
            loss = -(targets_soft[rows] * head(x[rows]).log_softmax(dim=-1)).sum(dim=-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        record = {"epoch": epoch + 1, "train_loss": total / max(1, len(train_rows))}
        if held:
            head.eval()
            with torch.inference_mode():
                probs = head(x[stop_rows]).softmax(dim=-1).numpy()
            predicted = quantile_points(probs, config)
            record["stop_mae"] = float(np.abs(predicted - y[stop_rows].numpy()).mean())
            if best is None or record["stop_mae"] < best[0]:
                best = (record["stop_mae"], {key: value.clone() for key, value in head.state_dict().items()})
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch + 1, record)
    if best is not None:
        head.load_state_dict(best[1])
    head.eval()
    chosen = min(history, key=lambda item: item.get("stop_mae", math.inf)) if held else history[-1]
    return head, {"history": history, "best_epoch": chosen["epoch"], "best_stop_mae": chosen.get("stop_mae")}


def train_probe(
    config: ProbeConfig,
    train: LengthData,
    validation: LengthData | None,
    output_dir: str | Path,
    on_metrics: Any = None,
    progress: bool = True,
) -> tuple[Path, TrainResult]:
    """The probe kind's trainer: read features through the served model, fit the head, save the predictor."""
    from seqsched.model_specs import shared_model

    started = time.perf_counter()
    loaded = shared_model(config.model)
    predictor = ProbePredictor(head=None, config=config, model=loaded.model, tokenizer=loaded.tokenizer)
    ids = predictor.prompt_ids(train.prompts)
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    log.info("reading probe features of %d prompts (layers %s)", len(ids), list(config.layers))
    features = read_features(loaded.model, ids, config, pad)
    targets = train.targets(config.target)

    def epoch_metrics(epoch: int, record: dict[str, float]) -> None:
        if on_metrics is not None:
            on_metrics(epoch, {key: value for key, value in record.items() if key != "epoch"})

    head, summary = fit_probe(features, targets, config, epoch_metrics)
    folder = save_probe(head, config, Path(output_dir) / "predictor", features.shape[1])
    result = TrainResult(
        steps=summary["best_epoch"],
        epochs=float(summary["best_epoch"]),
        examples_seen=len(targets) * summary["best_epoch"],
        train_loss=summary["history"][summary["best_epoch"] - 1]["train_loss"],
        wall_s=time.perf_counter() - started,
        history=summary["history"],
    )
    return folder, result


def save_probe(head: Any, config: ProbeConfig, folder: str | Path, features: int) -> Path:
    """Write the head weights and the manifest (the served model is referenced by its spec, not copied)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in head.state_dict().items()}, folder / HEAD_FILE)
    write_manifest(
        folder,
        PredictorKind.PROBE,
        {
            "config": config_to_dict(config),
            "head_file": HEAD_FILE,
            "features": features,
            "base_model": config.model.spec,
        },
    )
    return folder


def load_probe_predictor(folder: str | Path, manifest: dict[str, Any]) -> ProbePredictor:
    """A saved probe; the served model loads on first use unless attach() gives it the serving engine's."""
    from safetensors.torch import load_file

    config = config_from_dict(ProbeConfig, manifest["config"])
    head = build_probe_model(int(manifest["features"]), config)
    head.load_state_dict(load_file(Path(folder) / manifest["head_file"]))
    head.eval()
    return ProbePredictor(head=head, config=config)


def with_quantile(config: ProbeConfig, quantile: float) -> ProbeConfig:
    """The same probe reporting another quantile of its distribution (risk-aware caps)."""
    return replace(config, quantile=quantile)
