"""Resolve `--predictor` to something that predicts each request's response length.

Specs: `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `runs:/RUN/PATH` (an MLflow pyfunc through
lengthpred.registry), `oracle:FILE` (known lengths by request id), `perception` (ask the served model
itself, zero-shot) and `none` (no predictions: vanilla only).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from seqsched.errors import SeqschedError
from seqsched.length_files import LENGTH_KEYS, read_lengths
from seqsched.requests import Request

if TYPE_CHECKING:
    from lengthpred.predictor import LengthPredictor
    from seqsched.engines.api import Engine

ORACLE_KEYS = LENGTH_KEYS
"""Fields an oracle JSONL line may give the length in (the first one present wins)."""


class PredictorSource(enum.Enum):
    """Where a `--predictor` spec's lengths come from (what kind of model a registered one is, is
    lengthpred.kinds' business)."""

    NONE = "none"
    PERCEPTION = "perception"
    ORACLE = "oracle"
    REGISTRY = "registry"


@dataclass(frozen=True)
class PredictorSpec:
    """A parsed `--predictor` value."""

    kind: PredictorSource
    target: str = ""
    """The model URI (registry) or the file (oracle)."""

    def __str__(self) -> str:
        if self.kind is PredictorSource.ORACLE:
            return f"oracle:{self.target}"
        return self.target if self.kind is PredictorSource.REGISTRY else self.kind.value


def parse_predictor(spec: str) -> PredictorSpec:
    """Parse a `--predictor` value; a clear error for anything else."""
    value = spec.strip()
    if value.lower() in ("", "none"):
        return PredictorSpec(PredictorSource.NONE)
    if value.lower() == "perception":
        return PredictorSpec(PredictorSource.PERCEPTION)
    if value.startswith("oracle:"):
        target = value.removeprefix("oracle:")
        if not target:
            raise SeqschedError("--predictor oracle:FILE needs a file (JSONL of {id, true} or a length dataset)")
        return PredictorSpec(PredictorSource.ORACLE, target)
    if value.startswith(("models:/", "runs:/")):
        return PredictorSpec(PredictorSource.REGISTRY, value)
    raise SeqschedError(
        f"--predictor {spec!r}: expected models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN/PATH, "
        "oracle:FILE, perception or none"
    )


class RequestPredictor(Protocol):
    """Predicted response lengths for requests (the runner's view of a predictor)."""

    def predict_requests(self, requests: Sequence[Request]) -> list[int]:
        """One length (tokens, >= 0) per request, in order."""
        ...


def as_length(value: Any, where: str) -> int:
    """A predicted length as a non-negative int (pyfunc models may return floats or numpy scalars)."""
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise SeqschedError(f"{where}: predicted length {value!r} is not a number") from error
    if math.isnan(number) or math.isinf(number):
        raise SeqschedError(f"{where}: predicted length {value!r} is not finite")
    return max(0, round(number))


@dataclass
class PromptPredictor:
    """A LengthPredictor (prompts in) seen as a RequestPredictor: it is given each request's user prompt."""

    predictor: LengthPredictor
    name: str

    def predict_requests(self, requests: Sequence[Request]) -> list[int]:
        """One length per request, from its prompt."""
        values = list(self.predictor.predict([request.prompt for request in requests]))
        if len(values) != len(requests):
            raise SeqschedError(f"predictor {self.name}: {len(values)} predictions for {len(requests)} prompts")
        return [as_length(value, f"predictor {self.name}") for value in values]

    @property
    def quantiles_supported(self) -> bool:
        """True when the wrapped predictor gives a length distribution (its quantiles can serve as lengths)."""
        inner = getattr(self.predictor, "inner", self.predictor)
        return hasattr(inner, "distribution") and hasattr(inner, "lengths")

    def predict_quantiles(self, requests: Sequence[Request], quantiles: Sequence[float]) -> dict[float, list[int]]:
        """Each request's length at each quantile of its predicted distribution (one forward for all)."""
        inner = getattr(self.predictor, "inner", self.predictor)
        probs = inner.distribution([request.prompt for request in requests])
        return {q: inner.lengths(probs, q) for q in quantiles}


@dataclass
class SharedPrefillPredictor:
    """A length probe on the served model that reads its features from the serving engine's own prefill: the
    prompts are prefilled once, ahead of their batches, and generation reuses those KV caches
    (seqsched.engines.hf.HFEngine.prefill), so what the prediction itself adds is the head."""

    probe: Any
    """A lengthpred.probe.ProbePredictor (distribution_from_hidden, lengths, config.layers)."""
    engine: Any
    """An HFEngine over the probe's own model."""
    name: str
    quantile: float | None = None
    """The quantile of each predicted distribution to report (None: the probe's own)."""
    prefill_s: float = 0.0
    """Seconds of the last predict_requests spent prefilling (work generation then skips)."""
    share: bool = True
    """Prefill ahead and keep the caches for generation; False (a run on another engine, such as a continuous
    pool) reads the probe's layers alone, stopping the forward after the deepest one."""
    last_distribution: Any = None

    def predict_requests(self, requests: Sequence[Request]) -> list[int]:
        """Prefill every request (kept for its batch), read the probe's layers on the way, predict."""
        import time

        ids = [self.engine.encode(request.chat()) for request in requests]
        if not self.share:
            self.prefill_s = 0.0
            self.last_distribution = self.probe.distribution_from_ids(ids)
            return self.probe.lengths(self.last_distribution, self.quantile)
        started = time.perf_counter()
        hidden = self.engine.prefill(ids, hidden_layers=self.probe.config.layers, keep=True)
        self.prefill_s = time.perf_counter() - started
        self.last_distribution = self.probe.distribution_from_hidden(hidden)
        return self.probe.lengths(self.last_distribution, self.quantile)

    quantiles_supported = True
    """The probe gives a length distribution: its quantiles can serve as lengths (risk-aware FCR caps)."""

    def predict_quantiles(self, requests: Sequence[Request], quantiles: Sequence[float]) -> dict[float, list[int]]:
        """Each request's length at each quantile of its distribution, from one (shared) prefill."""
        self.predict_requests(requests)
        return {q: self.probe.lengths(self.last_distribution, q) for q in quantiles}

    def release(self) -> None:
        """Free the kept prefills (after the run)."""
        self.engine.drop_prefilled()


def share_prefill(predictor: RequestPredictor, engine: Engine | None) -> RequestPredictor:
    """The predictor reading the serving engine's prefill when it is a probe of the very model being served on
    an engine that can prefill ahead; otherwise the predictor unchanged."""
    inner = getattr(getattr(predictor, "predictor", None), "inner", None)
    spec = getattr(getattr(getattr(inner, "config", None), "model", None), "spec", None)
    if inner is None or not hasattr(inner, "distribution_from_hidden") or not hasattr(engine, "prefill"):
        return predictor
    if spec is None or spec != getattr(engine, "model_spec", None):
        return predictor
    inner.attach(engine.model, engine.tokenizer)  # type: ignore[union-attr]
    return SharedPrefillPredictor(inner, engine, getattr(predictor, "name", "probe"))


@dataclass
class OracleLengths:
    """Known response lengths by request id (the oracle strategy, or replaying a trace)."""

    lengths: Mapping[str, int]
    source: str

    def predict_requests(self, requests: Sequence[Request]) -> list[int]:
        """The known length of each request; an error naming the ids the file lacks."""
        missing = [request.id for request in requests if request.id not in self.lengths]
        if missing:
            shown = ", ".join(repr(value) for value in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise SeqschedError(
                f"{self.source}: no length for {len(missing)} of {len(requests)} request ids ({shown}); "
                "the oracle file must cover every request"
            )
        return [self.lengths[request.id] for request in requests]


def read_oracle(path: str | Path) -> OracleLengths:
    """Lengths by id from a lengths file (JSONL {"id", "true"|"length"|"num_tokens"|"predicted"}, OpenAI Batch
    output lines or a bench report, see seqsched.length_files) or a length dataset folder (its greedy length,
    else its max length)."""
    path = Path(path)
    if path.is_dir():
        return _oracle_from_dataset(path)
    return OracleLengths(read_lengths(path), str(path))


def _oracle_from_dataset(path: Path) -> OracleLengths:
    from data_tools.schema import load_length_dataset

    dataset = load_length_dataset(path)
    columns = set(dataset.column_names)
    lengths: dict[str, int] = {}
    for row in dataset:
        value = row.get("greedy_length") if "greedy_length" in columns else None
        if value is None:
            value = row["max_length"] if "max_length" in columns else row["label"]
        lengths[str(row["id"])] = int(value)
    return OracleLengths(lengths, str(path))


def resolve_predictor(
    spec: str | PredictorSpec, engine: Engine | None = None, tracking_uri: str | None = None
) -> RequestPredictor | None:
    """The predictor a spec names (None for `none`); perception needs the serving engine."""
    parsed = parse_predictor(spec) if isinstance(spec, str) else spec
    if parsed.kind is PredictorSource.NONE:
        return None
    if parsed.kind is PredictorSource.ORACLE:
        return read_oracle(parsed.target)
    if parsed.kind is PredictorSource.PERCEPTION:
        if engine is None:
            raise SeqschedError("--predictor perception asks the served model: it needs the engine")
        from lengthpred.perception import PerceptionPredictor

        return PromptPredictor(PerceptionPredictor(engine), "perception")
    try:
        from lengthpred.registry import load_predictor as load_registered
    except ImportError as error:
        raise SeqschedError(
            f"--predictor {parsed.target}: lengthpred.registry is not available in this build ({error})"
        ) from error
    loaded = PromptPredictor(load_registered(parsed.target, tracking_uri=tracking_uri), parsed.target)
    return share_prefill(loaded, engine)
