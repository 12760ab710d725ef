"""How good a length predictor is: MAE, Acc-50/100, Kendall tau, under-estimates, per-bucket table, plots."""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_tools.labels import PAPER_BUCKET, bucket_up
from lengthpred.predictor import LengthPredictor


class EvalTarget(enum.Enum):
    """What a prediction is compared with."""

    MAX_LENGTH = "max_length"
    """The longest sampled response, unrounded: what the paper's eval.py compares with (its L_max)."""
    LABEL = "label"
    """The training label: the longest response rounded up to a bucket."""
    GREEDY_LENGTH = "greedy_length"
    """The greedy response's length: what a greedy serving run generates."""


@dataclass(frozen=True)
class Metrics:
    """Point-prediction quality over a set of instructions."""

    count: int
    mae: float
    """Mean |predicted - true| in tokens (the paper's "Error")."""
    acc_50: float
    """Share with |predicted - true| <= 50 (the paper's Acc-50, <= as in its eval.py)."""
    acc_100: float
    """Share with |predicted - true| <= 100."""
    kendall_tau: float
    """Rank agreement between predicted and true lengths (what sorting by prediction relies on)."""
    under_rate: float
    """Share predicted below the true length (those requests would be cut and recomputed by FCR)."""
    mean_predicted: float
    mean_true: float

    def rounded(self, digits: int = 4, without: tuple[str, ...] = ("count",)) -> dict[str, float]:
        """The metrics as a flat dict, each rounded (for sweep tables and JSON), less the fields named."""
        return {key: round(value, digits) for key, value in asdict(self).items() if key not in without}


def compute_metrics(predicted: Sequence[float], true: Sequence[float]) -> Metrics:
    """Metrics of predicted lengths against true lengths."""
    import numpy as np
    from scipy.stats import kendalltau

    if len(predicted) != len(true):
        raise ValueError(f"{len(predicted)} predictions for {len(true)} true lengths")
    if not len(true):
        raise ValueError("no instructions to evaluate")
    predicted_array = np.asarray(predicted, dtype=float)
    true_array = np.asarray(true, dtype=float)
    error = np.abs(predicted_array - true_array)
    tau = kendalltau(predicted_array, true_array).statistic if len(true) > 1 else float("nan")
    return Metrics(
        count=len(true),
        mae=float(error.mean()),
        acc_50=float((error <= 50).mean()),
        acc_100=float((error <= 100).mean()),
        kendall_tau=float(tau),
        under_rate=float((predicted_array < true_array).mean()),
        mean_predicted=float(predicted_array.mean()),
        mean_true=float(true_array.mean()),
    )


def per_bucket(predicted: Sequence[float], true: Sequence[float], bucket: int = PAPER_BUCKET) -> list[dict[str, Any]]:
    """Metrics within each bucket of the true length (1-50, 51-100, ...), shortest first."""
    groups: dict[int, list[int]] = {}
    for index, value in enumerate(true):
        groups.setdefault(bucket_up(int(value), bucket), []).append(index)
    rows = []
    for upper in sorted(groups):
        indices = groups[upper]
        metrics = compute_metrics([predicted[i] for i in indices], [true[i] for i in indices])
        rows.append(
            {
                "true_bucket": f"{upper - bucket + 1}-{upper}",
                "count": metrics.count,
                "mae": metrics.mae,
                "acc_50": metrics.acc_50,
                "acc_100": metrics.acc_100,
                "under_rate": metrics.under_rate,
                "mean_predicted": metrics.mean_predicted,
            }
        )
    return rows


@dataclass
class EvalReport:
    """Everything an evaluation produced (written as JSON; plots beside it)."""

    predictor: str
    data: str
    target: str
    metrics: Metrics
    """Against `target`."""
    metrics_by_target: dict[str, Metrics]
    """Against every target the dataset has (max_length and label)."""
    buckets: list[dict[str, Any]]
    unparsed: int
    """Answers that held no number and got the fallback (generative predictors)."""
    predict_s: float
    seconds_per_1000: float
    ids: list[str] = field(repr=False, default_factory=list)
    predicted: list[int] = field(repr=False, default_factory=list)
    true: list[int] = field(repr=False, default_factory=list)
    plots: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """One flat row for tables and MLflow metrics."""
        row: dict[str, Any] = {"count": self.metrics.count}
        for name, metrics in self.metrics_by_target.items():
            suffix = "" if name == self.target else f"_vs_{name}"
            row |= {f"{key}{suffix}": value for key, value in asdict(metrics).items() if key != "count"}
        row |= {"unparsed": self.unparsed, "seconds_per_1000": self.seconds_per_1000}
        return row

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able data."""
        return asdict(self)


def evaluate(
    predictor: LengthPredictor,
    prompts: Sequence[str],
    targets: dict[str, Sequence[int]],
    target: EvalTarget = EvalTarget.MAX_LENGTH,
    ids: Sequence[str] | None = None,
    predictor_name: str = "",
    data_name: str = "",
) -> EvalReport:
    """Run the predictor on prompts (timed) and score it against every target given (by EvalTarget value)."""
    if target.value not in targets:
        raise ValueError(f"target {target.value!r} missing; have {sorted(targets)}")
    unparsed_before = int(getattr(predictor, "unparsed", 0))
    started = time.perf_counter()
    predicted = [int(value) for value in predictor.predict(list(prompts))]
    predict_s = time.perf_counter() - started
    if len(predicted) != len(prompts):
        raise ValueError(f"the predictor returned {len(predicted)} lengths for {len(prompts)} prompts")
    by_target = {name: compute_metrics(predicted, values) for name, values in targets.items()}
    true = [int(value) for value in targets[target.value]]
    return EvalReport(
        predictor=predictor_name,
        data=data_name,
        target=target.value,
        metrics=by_target[target.value],
        metrics_by_target=by_target,
        buckets=per_bucket(predicted, true),
        unparsed=int(getattr(predictor, "unparsed", 0)) - unparsed_before,
        predict_s=predict_s,
        seconds_per_1000=predict_s / len(prompts) * 1000,
        ids=list(ids or []),
        predicted=predicted,
        true=true,
    )


def plot(report: EvalReport, out_dir: str | Path, prefix: str = "eval") -> list[Path]:
    """Predicted-vs-true scatter and error histogram as PNG files in out_dir; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predicted = np.asarray(report.predicted, dtype=float)
    true = np.asarray(report.true, dtype=float)
    title = f"{report.predictor or 'predictor'}: MAE {report.metrics.mae:.1f}, Acc-100 {report.metrics.acc_100:.0%}"

    figure, axes = plt.subplots(figsize=(5.5, 5))
    axes.scatter(true, predicted, s=6, alpha=0.35)
    top = float(max(true.max(), predicted.max(), 1.0))
    axes.plot([0, top], [0, top], color="black", linewidth=1, label="predicted = true")
    axes.fill_between([0, top], [-100, top - 100], [100, top + 100], color="green", alpha=0.08, label="within 100")
    axes.set(xlabel=f"true length ({report.target})", ylabel="predicted length", title=title, xlim=(0, top))
    axes.set_ylim(0, top)
    axes.legend(loc="upper left")
    scatter_path = out_dir / f"{prefix}_scatter.png"
    figure.tight_layout()
    figure.savefig(scatter_path, dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.hist(predicted - true, bins=60, color="tab:blue", alpha=0.8)
    for edge in (-100, -50, 50, 100):
        axes.axvline(edge, color="gray", linestyle=":", linewidth=1)
    axes.set(xlabel="predicted - true (tokens)", ylabel="instructions", title=title)
    histogram_path = out_dir / f"{prefix}_errors.png"
    figure.tight_layout()
    figure.savefig(histogram_path, dpi=110)
    plt.close(figure)
    report.plots = [str(scatter_path), str(histogram_path)]
    return [scatter_path, histogram_path]
