"""Metrics on known inputs, the per-bucket table, the unparsed count, the report and its plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from lengthpred.evaluate import EvalTarget, compute_metrics, evaluate, per_bucket, plot
from seqsched_cli.main import main
from tests.synthetic_lengths import length_dataset  # noqa: F401  (fixture)


def test_metrics_on_known_inputs() -> None:
    metrics = compute_metrics([100, 150, 300, 10], [100, 100, 150, 60])
    # errors 0, 50, 150, 50
    assert metrics.count == 4
    assert metrics.mae == pytest.approx(62.5)
    assert metrics.acc_50 == pytest.approx(0.75)  # |error| <= 50, as the paper's eval.py counts
    assert metrics.acc_100 == pytest.approx(0.75)
    assert metrics.under_rate == pytest.approx(0.25)  # only 10 < 60
    assert metrics.mean_predicted == pytest.approx(140) and metrics.mean_true == pytest.approx(102.5)


def test_kendall_tau_measures_order_only() -> None:
    assert compute_metrics([1, 2, 3, 4], [10, 20, 30, 40]).kendall_tau == pytest.approx(1.0)
    assert compute_metrics([4, 3, 2, 1], [10, 20, 30, 40]).kendall_tau == pytest.approx(-1.0)
    assert compute_metrics([400, 300, 200, 100], [10, 20, 30, 40]).mae > 100


def test_metrics_reject_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="3 predictions for 2"):
        compute_metrics([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="no instructions"):
        compute_metrics([], [])


def test_per_bucket_groups_by_true_length() -> None:
    rows = per_bucket([40, 60, 120, 90], [30, 50, 110, 140])
    assert [row["true_bucket"] for row in rows] == ["1-50", "101-150"]
    assert [row["count"] for row in rows] == [2, 2]
    assert rows[0]["mae"] == pytest.approx(10) and rows[1]["mae"] == pytest.approx(30)
    assert rows[1]["under_rate"] == pytest.approx(0.5)


@dataclass
class _Answering:
    """A generative-like predictor: the fallback for prompts without a number, counted in unparsed."""

    unparsed: int = 0

    def predict(self, prompts: Sequence[str]) -> list[int]:
        out = []
        for prompt in prompts:
            digits = [int(word) for word in prompt.split() if word.isdigit()]
            if not digits:
                self.unparsed += 1
            out.append(digits[0] * 20 if digits else 100)
        return out


def test_evaluate_counts_unparsed_and_scores_both_targets(tmp_path: Path) -> None:
    predictor = _Answering(unparsed=5)  # earlier calls' count is not this evaluation's
    prompts = ["say cat 3 times", "no number here", "repeat dog 10 times"]
    targets = {"max_length": [60, 130, 205], "label": [100, 150, 250]}
    report = evaluate(predictor, prompts, targets, EvalTarget.MAX_LENGTH, ["a", "b", "c"], "fake", "data")
    assert report.predicted == [60, 100, 200] and report.unparsed == 1
    assert report.metrics.mae == pytest.approx((0 + 30 + 5) / 3)
    assert report.metrics_by_target["label"].mae == pytest.approx((40 + 50 + 50) / 3)
    summary = report.summary()
    assert summary["mae"] == report.metrics.mae and summary["mae_vs_label"] == report.metrics_by_target["label"].mae
    assert summary["seconds_per_1000"] >= 0
    paths = plot(report, tmp_path)
    assert [path.name for path in paths] == ["eval_scatter.png", "eval_errors.png"]
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in paths)
    json.dumps(report.to_dict())  # the report is JSON-able


def test_eval_command_on_a_saved_predictor(length_dataset: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    from lengthpred.baselines import SklearnConfig, save_regressor, train_sklearn
    from lengthpred.data import load_length_data
    from lengthpred.kinds import PredictorKind

    config = SklearnConfig()
    predictor = train_sklearn(config, load_length_data(length_dataset, "train"))
    folder = save_regressor(predictor, tmp_path / "predictor", PredictorKind.SKLEARN, config)
    out = tmp_path / "eval"
    argv = ["--predictor", str(folder), "--data", str(length_dataset), "--split", "validation", "--limit", "20"]
    assert main(["eval", *argv, "--output-dir", str(out), "--target", "label"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "label" and report["metrics"]["count"] == 20
    assert (out / "eval_scatter.png").is_file() and (out / "eval_errors.png").is_file()
    assert "| predictor" in capsys.readouterr().out
