"""The probe kind: the served model's own hidden states as features, a trained head, the same features whether read
alone or from the serving engine's prefill, and serving that reuses the probe's prefill (outputs unchanged)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lengthpred.artifact import load_saved, predictor_kind
from lengthpred.data import load_length_data
from lengthpred.evaluate import compute_metrics
from lengthpred.kinds import PredictorKind
from lengthpred.probe import (
    ProbeConfig,
    ProbePooling,
    ProbePredictor,
    bin_count,
    features_from_hidden,
    fit_head,
    quantile_points,
    read_features,
    train_probe,
)
from seqsched.engines.hf import HFEngine
from seqsched.model_specs import ModelConfig
from seqsched.requests import Request
from serving.policy.scheduler import ScheduleConfig, Strategy
from serving.predictors import PromptPredictor, SharedPrefillPredictor, share_prefill
from serving.runner import run
from tests.synthetic_lengths import length_dataset  # noqa: F401  (fixture)
from tests.tiny_model import synthetic_prompts


def config_for(model_dir: Path, **changes: object) -> ProbeConfig:
    # The tiny model's answer length is the count inside the prompt: mean pooling sees it (its last token does not).
    base = ProbeConfig(
        model=ModelConfig(spec=str(model_dir)), layers=(1, 2), pooling=ProbePooling.MEAN, bin_width=25, max_length=500
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("pooling", list(ProbePooling))
def test_features_alone_equal_features_from_the_serving_prefill(tiny_engine: HFEngine, pooling: ProbePooling) -> None:
    config = replace(ProbeConfig(layers=(0, 1, 2)), pooling=pooling)
    ids = [tiny_engine.encode(prompt) for prompt in synthetic_prompts(7, seed=3)]
    alone = read_features(tiny_engine.model, ids, config, tiny_engine.pad_token_id)
    shared = features_from_hidden(tiny_engine.prefill(ids, hidden_layers=config.layers, keep=False), config)
    width = tiny_engine.model.config.hidden_size * 3 * (2 if pooling is ProbePooling.BOTH else 1)
    assert alone.shape == shared.shape == (7, width)
    np.testing.assert_allclose(alone, shared, atol=1e-4)


def test_generation_from_kept_prefills_equals_a_plain_batch(tiny_engine: HFEngine) -> None:
    ids = [tiny_engine.encode(prompt) for prompt in synthetic_prompts(9, seed=4)]
    plain = tiny_engine.generate(ids[2:8], 40)
    tiny_engine.prefill(ids, keep=True)
    try:
        assert len(tiny_engine.prefilled) == len({tuple(row) for row in ids}) and tiny_engine.prefilled_bytes > 0
        reused = tiny_engine.generate(ids[2:8], 40)
    finally:
        tiny_engine.drop_prefilled()
    assert [row.token_ids for row in reused.rows] == [row.token_ids for row in plain.rows]
    assert reused.padded_prompt_tokens == 0 and plain.padded_prompt_tokens > 0
    assert not tiny_engine.prefilled


def test_quantiles_of_the_bin_distribution() -> None:
    config = ProbeConfig(bin_width=50, max_length=200)
    assert bin_count(config) == 5
    probs = np.array([[0.0, 0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0, 0.5]])
    assert quantile_points(probs, config).tolist() == pytest.approx([125.0, 50.0])
    assert quantile_points(probs, config, 0.9).tolist() == pytest.approx([145.0, 200.0])  # capped at the limit


def test_head_learns_a_signal_and_stops_early() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(600, 8)).astype(np.float32)
    lengths = np.clip(100 + 60 * features[:, 0] + rng.normal(scale=5, size=600), 1, 255).astype(int)
    config = ProbeConfig(bin_width=16, max_length=256, epochs=40, hidden=32, early_stop_fraction=0.2)
    head, summary = fit_head(features[:500], lengths[:500].tolist(), config)
    with torch.inference_mode():
        probs = head(torch.from_numpy(features[500:])).softmax(dim=-1).numpy()
    mae = float(np.abs(quantile_points(probs, config) - lengths[500:]).mean())
    constant = float(np.abs(np.median(lengths[:500]) - lengths[500:]).mean())
    assert mae < 0.4 * constant, (mae, constant)
    assert 1 <= summary["best_epoch"] <= 40 and summary["best_stop_mae"] is not None


def test_average_of_per_layer_heads_is_one_module() -> None:
    from lengthpred.probe import ProbeCombine, fit_probe, member_slices

    rng = np.random.default_rng(1)
    features = rng.normal(size=(300, 12)).astype(np.float32)  # three "layers" of 4 columns
    lengths = np.clip(100 + 50 * features[:, 4] + 30 * features[:, 8], 1, 255).astype(int)
    config = ProbeConfig(layers=(1, 2, 3), combine=ProbeCombine.AVERAGE, seeds=2, epochs=5, hidden=0)
    assert member_slices(12, config) == [(0, 4), (0, 4), (4, 8), (4, 8), (8, 12), (8, 12)]
    model, summary = fit_probe(features, lengths.tolist(), config)
    assert summary["members"] == 6 and len(model.members) == 6
    with torch.inference_mode():
        probs = model(torch.from_numpy(features)).softmax(dim=-1)
        by_hand = (
            sum(
                member(torch.from_numpy(features[:, start:end])).softmax(dim=-1)
                for member, (start, end) in zip(model.members, model.slices, strict=True)
            )
            / 6
        )
    assert torch.allclose(probs, by_hand, atol=1e-5)


def test_probe_trains_saves_loads_and_serves_sharing_the_prefill(
    tiny_model_dir: Path,
    tiny_engine: HFEngine,
    length_dataset: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    train = load_length_data(length_dataset, "train")
    validation = load_length_data(length_dataset, "validation")
    config = config_for(tiny_model_dir, epochs=30, hidden=64)
    folder, result = train_probe(config, train, validation, tmp_path, progress=False)
    assert predictor_kind(folder) is PredictorKind.PROBE and result.steps >= 1
    assert json.loads((folder / "predictor.json").read_text())["base_model"] == str(tiny_model_dir)
    loaded = load_saved(folder)
    assert isinstance(loaded, ProbePredictor)
    predicted = loaded.predict(validation.prompts)
    learned = compute_metrics(predicted, validation.max_lengths).mae
    constant = compute_metrics([int(np.median(train.max_lengths))] * len(validation), validation.max_lengths).mae
    assert learned < 0.5 * constant, (learned, constant)

    # Serving: the same probe attached to the engine of the same model predicts the same lengths from the
    # engine's prefill, and generation reuses that prefill with unchanged outputs.
    class Registered:  # what a pyfunc RegisteredPredictor exposes: .inner
        inner = load_saved(folder)

    shared = share_prefill(PromptPredictor(Registered(), "probe"), tiny_engine)  # type: ignore[arg-type]
    assert isinstance(shared, SharedPrefillPredictor)
    requests = [Request(id=f"r{index}", prompt=prompt) for index, prompt in enumerate(validation.prompts[:12])]
    lengths = shared.predict_requests(requests)
    assert lengths == loaded.predict(validation.prompts[:12])
    assert shared.prefill_s > 0 and tiny_engine.prefilled
    cfg = ScheduleConfig(strategy=Strategy.FCR, limit=48, bin_width=8)
    scheduled = run(
        tiny_engine, requests, lengths, cfg, predictor_s=shared.prefill_s, shared_prefill_s=shared.prefill_s
    )
    shared.release()
    assert not tiny_engine.prefilled
    vanilla = run(tiny_engine, requests, None, replace(cfg, strategy=Strategy.VANILLA))
    assert [r.token_ids for r in scheduled.records] == [r.token_ids for r in vanilla.records]
    first_pass = [batch for batch in scheduled.batches if batch.phase.value == "initial"]
    assert all(batch.padded_prompt_tokens == 0 for batch in first_pass), "generation reused the probe's prefill"
    assert scheduled.metrics.shared_prefill_s == pytest.approx(shared.prefill_s)
    assert scheduled.metrics.predictor_s == pytest.approx(0.0, abs=1e-9)

    other = HFEngine(tiny_engine.model, tiny_engine.tokenizer)  # no model spec: it may be another model
    assert not isinstance(share_prefill(PromptPredictor(Registered(), "probe"), other), SharedPrefillPredictor)  # type: ignore[arg-type]
