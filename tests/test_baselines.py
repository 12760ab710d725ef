"""The small predictors: TF-IDF regressors and frozen-embedding regressors learn the synthetic lengths, save and
load back with the same predictions."""

from __future__ import annotations

from pathlib import Path

import pytest

from lengthpred.artifact import load_saved, read_manifest
from lengthpred.baselines import (
    EmbeddingConfig,
    Regressor,
    SklearnConfig,
    save_regressor,
    train_embedding,
    train_sklearn,
)
from lengthpred.data import load_length_data
from lengthpred.encoders import Pooling
from lengthpred.evaluate import compute_metrics
from lengthpred.kinds import PredictorKind
from lengthpred.predictor import LengthPredictor
from tests.synthetic_lengths import length_dataset  # noqa: F401  (fixture)


@pytest.mark.parametrize("regressor", [Regressor.RIDGE, Regressor.SVR, Regressor.GBM])
def test_sklearn_learns_lengths_and_round_trips(length_dataset: Path, tmp_path: Path, regressor: Regressor) -> None:  # noqa: F811
    train = load_length_data(length_dataset, "train")
    validation = load_length_data(length_dataset, "validation")
    config = SklearnConfig(regressor=regressor, svd_components=16)
    predictor = train_sklearn(config, train)
    assert isinstance(predictor, LengthPredictor)
    predicted = predictor.predict(validation.prompts)
    assert all(isinstance(value, int) and value >= 1 for value in predicted)
    constant = sorted(train.max_lengths)[len(train) // 2]
    learned = compute_metrics(predicted, validation.max_lengths).mae
    assert learned < 0.7 * compute_metrics([constant] * len(validation), validation.max_lengths).mae
    folder = save_regressor(predictor, tmp_path / "saved", PredictorKind.SKLEARN, config)
    assert read_manifest(folder)["config"]["regressor"] == regressor.value
    assert load_saved(folder).predict(validation.prompts) == predicted
    assert predictor.predict([]) == []


def test_predictions_are_clipped_to_the_maximum(length_dataset: Path) -> None:  # noqa: F811
    predictor = train_sklearn(SklearnConfig(max_length=100), load_length_data(length_dataset, "train"))
    assert max(predictor.predict(["please say dog 24 times and be quick"] * 2)) <= 100


def test_embedding_regressor_round_trips(tiny_model_dir: Path, length_dataset: Path, tmp_path: Path) -> None:  # noqa: F811
    # The tiny model's decoder stands in for MiniLM (any Hugging Face folder is an encoder spec).
    config = EmbeddingConfig(encoder=str(tiny_model_dir), pooling=Pooling.MEAN, regressor=Regressor.RIDGE, alpha=0.1)
    train = load_length_data(length_dataset, "train", limit=120)
    predictor = train_embedding(config, train)
    prompts = ["repeat apple 2 times", "please list kite 23 times and be quick"]
    predicted = predictor.predict(prompts)
    folder = save_regressor(predictor, tmp_path / "saved", PredictorKind.EMBEDDING, config)
    loaded = load_saved(folder)
    assert loaded.predict(prompts) == predicted
    assert loaded.embedding == config


@pytest.mark.integration
def test_minilm_embeddings_match_sentence_transformers() -> None:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from lengthpred.encoders import MINILM, embed, load_encoder, resolve_encoder

    texts = ["Write a poem about the sea.", "What is 2 + 2?"]
    model, tokenizer = load_encoder(MINILM, device="cpu")
    ours = embed(model, tokenizer, texts)
    reference = SentenceTransformer(resolve_encoder(MINILM), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.allclose(ours, reference, atol=1e-4)
