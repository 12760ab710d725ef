"""The length-distribution head: smoothed targets, the decision rules, training, save and load."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lengthpred.artifact import load_saved, predictor_kind
from lengthpred.data import load_length_data
from lengthpred.encoders import Pooling
from lengthpred.head import Decision, Finetune, HeadConfig, HeadPredictor, bin_count, decide, train_head
from lengthpred.head_model import soft_targets
from lengthpred.kinds import PredictorKind
from lengthpred.train import LoraSettings, OptimSettings
from tests.synthetic_lengths import length_dataset  # noqa: F401  (fixture)

CONFIG = HeadConfig(bin_width=50, max_length=200)  # bins 0-49, 50-99, 100-149, 150-199, 200+


def test_bins_and_soft_targets() -> None:
    assert bin_count(CONFIG) == 5
    one_hot = soft_targets(torch.tensor([0.0, 49.0, 120.0, 900.0]), replace(CONFIG, smoothing=0.0))
    assert one_hot.argmax(dim=1).tolist() == [0, 0, 2, 4]
    smooth = soft_targets(torch.tensor([120.0]), CONFIG)[0]
    assert torch.allclose(smooth.sum(), torch.tensor(1.0))
    assert smooth.argmax() == 2 and smooth[1] == pytest.approx(float(smooth[3]))


def test_median_decision_interpolates_inside_the_bin() -> None:
    probs = np.array(
        [
            [0.0, 0.0, 1.0, 0.0, 0.0],  # all mass in 100-149: the median is its middle
            [0.5, 0.0, 0.0, 0.0, 0.5],  # half at 0-49, half at 200+: the median is the first bin's end
            [0.1, 0.2, 0.4, 0.2, 0.1],  # symmetric around bin 2
        ]
    )
    assert decide(probs, CONFIG).tolist() == pytest.approx([125.0, 50.0, 125.0])


def test_window_decision_maximises_mass_within_100() -> None:
    # 60% spread over 0-49 and 150-199 (together reachable from ~100), 40% at 400+ -> predict about 100.
    probs = np.array([[0.3, 0.0, 0.0, 0.3, 0.4]])
    wide = replace(CONFIG, decision=Decision.WINDOW)
    point = float(decide(probs, wide)[0])
    assert 75 <= point <= 125
    assert float(decide(probs, CONFIG)[0]) == pytest.approx(150 + 50 * 0.2 / 0.3)  # the median sits elsewhere


@pytest.mark.parametrize("finetune", [Finetune.LORA, Finetune.FULL])
def test_head_trains_saves_and_loads(
    tiny_model_dir: Path,
    length_dataset: Path,  # noqa: F811
    tmp_path: Path,
    finetune: Finetune,
) -> None:
    config = HeadConfig(
        encoder=str(tiny_model_dir),
        finetune=finetune,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj")),
        pooling=Pooling.LAST,
        query_template=True,
        optim=OptimSettings(max_steps=12, learning_rate=2e-3, batch_size=16, grad_accum=1, eval_every=0, save_every=0),
        eval_limit=16,
        head_learning_rate=1e-2,
        batch_size=8,
    )
    train = load_length_data(length_dataset, "train", limit=192)
    validation = load_length_data(length_dataset, "validation", limit=32)
    logged: list[dict[str, float]] = []
    folder, result = train_head(config, train, validation, tmp_path, lambda _, m: logged.append(m), progress=False)
    losses = [m["train_loss"] for m in logged if "train_loss" in m]
    assert result.steps == 12 and losses[-1] < losses[0]
    assert "eval_mae" in logged[-1]
    assert predictor_kind(folder) is PredictorKind.HEAD
    assert (folder / ("adapter" if finetune is Finetune.LORA else "encoder")).is_dir()
    loaded = load_saved(folder)
    assert isinstance(loaded, HeadPredictor)
    predicted = loaded.predict(validation.prompts)
    assert len(predicted) == len(validation) and all(value >= 1 for value in predicted)
    assert loaded.predict(validation.prompts[:3]) == predicted[:3]  # batching does not change a prediction


def test_ensemble_averages_member_distributions_and_resumes_per_member(
    tiny_model_dir: Path,
    length_dataset: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = HeadConfig(
        encoder=str(tiny_model_dir),
        finetune=Finetune.FULL,
        pooling=Pooling.LAST,
        optim=OptimSettings(max_steps=4, learning_rate=2e-3, batch_size=16, grad_accum=1, eval_every=0, save_every=0),
        eval_limit=0,
        head_learning_rate=1e-2,
        batch_size=8,
        members=2,
    )
    train = load_length_data(length_dataset, "train", limit=64)
    prompts = load_length_data(length_dataset, "validation", limit=12).prompts
    logged: list[dict[str, float]] = []
    folder, result = train_head(config, train, None, tmp_path, lambda _, m: logged.append(m), progress=False)
    assert result.steps == 8  # two members of 4 steps
    assert {key.split("_")[0] for m in logged for key in m} == {"member0", "member1"}
    ensemble = load_saved(folder)
    assert isinstance(ensemble, HeadPredictor) and len(ensemble.models) == 2
    members = [load_saved(tmp_path / f"member-{index}" / "predictor") for index in range(2)]
    assert isinstance(members[0], HeadPredictor) and isinstance(members[1], HeadPredictor)
    # different seeds give different members; the ensemble's distribution is their mean
    first, second = (member.distribution(prompts) for member in members)
    assert not np.allclose(first, second)
    assert np.allclose(ensemble.distribution(prompts), (first + second) / 2, atol=1e-6)
    assert ensemble.predict(prompts) == [max(1, round(float(v))) for v in decide((first + second) / 2, config)]
    # a rerun finds both members trained and only rebuilds the ensemble folder
    again, rerun = train_head(config, train, None, tmp_path, progress=False)
    assert rerun.steps == 0 and load_saved(again).predict(prompts) == ensemble.predict(prompts)
