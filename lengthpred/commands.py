"""`seqsched train`, `seqsched eval` and `seqsched register`."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lengthpred.baselines import EmbeddingConfig, SklearnConfig
from lengthpred.data import LengthData, load_length_data
from lengthpred.evaluate import EvalReport, EvalTarget
from lengthpred.generative import GenerativeConfig
from lengthpred.head import HeadConfig
from lengthpred.kinds import PredictorKind
from lengthpred.probe import ProbeConfig
from seqsched.config import to_dict
from seqsched.errors import SeqschedError, require_at_least
from seqsched.files import check_writable, write_json
from seqsched.tables import table

log = logging.getLogger(__name__)

TABLE_COLUMNS = ["predictor", "count", "mae", "acc_50", "acc_100", "kendall_tau", "under_rate", "seconds_per_1000"]


@dataclass(frozen=True)
class TrainConfig:
    """Train a length predictor on a length dataset, evaluate it, log it to MLflow, optionally register it."""

    kind: PredictorKind = PredictorKind.SKLEARN
    """lora (the paper's generative predictor), perception (zero-shot, no training), sklearn, embedding, head."""
    data: str = ""
    """Length dataset folder (from `seqsched label`) to train on."""
    split: str | None = None
    """Its split to train on (default: `train`, or the only one)."""
    limit: int | None = None
    """Train on the first N records only."""
    validation: str | None = None
    """Length dataset folder to evaluate on (default: the data's `validation` split, when it has one)."""
    validation_split: str | None = None
    validation_start: int = 0
    validation_limit: int | None = 1000
    """Evaluate on this many records from validation_start (the paper: the first 1,000)."""
    eval_target: EvalTarget = EvalTarget.MAX_LENGTH
    """Score against the unrounded longest response (the paper's eval.py) or the bucketed label."""
    output_dir: str = "outputs/train"
    """Checkpoints, the predictor folder, the eval report and plots go here; training resumes from it."""
    resume: bool = True
    """Continue from the newest checkpoint in output_dir (when it was made with the same settings and data)."""
    tracking_uri: str | None = None
    """MLflow tracking store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory)."""
    experiment: str = "seqsched-lengthpred"
    run_name: str | None = None
    register_as: str | None = None
    """Register the trained predictor under this model name."""
    alias: str | None = None
    """Point this alias (e.g. champion) at the registered version."""
    progress: bool = True
    sklearn: SklearnConfig = field(default_factory=SklearnConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    generative: GenerativeConfig = field(default_factory=GenerativeConfig)
    """For kinds lora and perception."""
    head: HeadConfig = field(default_factory=HeadConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """For kind probe: a head on the served model's own hidden states."""

    def __post_init__(self) -> None:
        require_at_least(self, 1, "limit", "validation_limit")
        require_at_least(self, 0, "validation_start")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluate a length predictor on a length dataset: metrics table, JSON report and plots."""

    predictor: str = ""
    """models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/predictor, or a saved predictor folder."""
    data: str = ""
    """Length dataset folder."""
    split: str | None = None
    start: int = 0
    limit: int | None = 1000
    """Evaluate on this many records from start (the paper: the first 1,000 validation instructions)."""
    target: EvalTarget = EvalTarget.MAX_LENGTH
    output_dir: str = "outputs/eval"
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        require_at_least(self, 1, "limit")
        require_at_least(self, 0, "start")


@dataclass(frozen=True)
class RegisterConfig:
    """Register a training run's predictor as a new version of a model (pyfunc) and set an alias."""

    run: str = ""
    """The run id that `seqsched train` printed."""
    name: str = ""
    alias: str | None = None
    tracking_uri: str | None = None


def _require(value: Any, option: str, what: str) -> None:
    if not value:
        raise SeqschedError(f"{option} is required ({what})")


def _validation_data(config: TrainConfig) -> LengthData | None:
    from datasets import DatasetDict, load_from_disk

    source, split = config.validation, config.validation_split
    if source is None:
        loaded = load_from_disk(config.data)
        if not isinstance(loaded, DatasetDict) or "validation" not in loaded:
            return None
        source, split = config.data, "validation"
    return load_length_data(source, split, config.validation_start, config.validation_limit)


def fingerprint(config: TrainConfig, train: LengthData) -> str:
    """Identifies a training setup, so a run never resumes from another setup's checkpoints."""
    settings = to_dict(config)
    for key in ("output_dir", "resume", "tracking_uri", "experiment", "run_name", "register_as", "alias", "progress"):
        settings.pop(key, None)
    settings["train_ids"] = hashlib.sha256("\n".join(train.ids).encode()).hexdigest()
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _prepare_output(config: TrainConfig, train: LengthData) -> Path:
    import shutil

    output_dir = Path(config.output_dir)
    stamp = output_dir / "setup.json"
    current = fingerprint(config, train)
    # Training state: checkpoints, and for an ensemble of heads each member's folder (checkpoints + its predictor).
    state = [path for path in (output_dir / "checkpoints", *sorted(output_dir.glob("member-*"))) if path.exists()]
    if state:
        previous = json.loads(stamp.read_text()).get("fingerprint") if stamp.is_file() else None
        if not config.resume:
            for path in state:
                shutil.rmtree(path)
        elif previous != current:
            raise SeqschedError(
                f"{output_dir} holds checkpoints of a different training setup; "
                "use another --output_dir, or --resume false to start over there"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(stamp, {"fingerprint": current, "config": to_dict(config)})
    return output_dir


def train_predictor(
    config: TrainConfig, train: LengthData, validation: LengthData | None, output_dir: Path, run: Any
) -> Path:
    """Train the chosen kind (perception: just describe it); return the saved predictor folder."""
    from lengthpred.kinds import resolve, spec

    kind = spec(config.kind)
    on_metrics = run.log_metrics if run is not None else None
    trainer = resolve(kind.train)
    settings = getattr(config, kind.settings)
    folder, result = trainer(settings, train, validation, output_dir, on_metrics, config.progress)
    if run is not None and result is not None:
        run.log_metrics(result.steps, {"train_wall_s": result.wall_s, "train_examples_seen": result.examples_seen})
    return folder


def evaluate_folder(predictor: Any, name: str, data: LengthData, target: EvalTarget, output_dir: Path) -> EvalReport:
    """Evaluate, write report.json and the plots into output_dir, print the table."""
    from lengthpred.evaluate import evaluate as score
    from lengthpred.evaluate import plot

    report = score(predictor, data.prompts, data.by_target(), target, data.ids, name, data.source)
    plot(report, output_dir)
    write_json(output_dir / "report.json", report.to_dict())
    print(table([{"predictor": name, **report.summary()}], TABLE_COLUMNS))
    print(table(report.buckets))
    return report


@dataclass
class TrainOutcome:
    """What `seqsched train` made: the run, the predictor folder and, when registered, its model URI."""

    run_id: str
    predictor_dir: Path
    model_uri: str
    registered_uri: str | None = None
    report: EvalReport | None = None


def train(config: TrainConfig) -> TrainOutcome:
    """`seqsched train`: train, evaluate, log to MLflow, optionally register and alias."""
    from lengthpred import registry
    from lengthpred.artifact import load_saved

    _require(config.data, "--data", "a length dataset folder from `seqsched label`")
    if config.alias and not config.register_as:
        raise SeqschedError("--alias needs --register-as NAME (the model the alias belongs to)")
    check_writable(config.output_dir, "output_dir", folder=True)
    train = load_length_data(config.data, config.split, 0, config.limit)
    validation = _validation_data(config)
    output_dir = _prepare_output(config, train)
    print(f"training a {config.kind.value} predictor on {len(train)} records of {train.source}")
    with registry.start_run(config.tracking_uri, config.experiment, config.run_name) as run:
        run.set_tags({"kind": config.kind.value, "data": train.source})
        run.log_params(to_dict(config))
        started = time.perf_counter()
        folder = train_predictor(config, train, validation, output_dir, run)
        run.log_metrics(0, {"train_s": time.perf_counter() - started})
        report = None
        if validation is not None:
            report = evaluate_folder(
                load_saved(folder), config.kind.value, validation, config.eval_target, output_dir / "eval"
            )
            run.log_metrics(0, report.summary(), prefix="val_")
            registry.log_eval_report(run, report.to_dict(), report.plots, "validation")
        model_uri = registry.log_predictor(run, folder)
        print(f"run {run.run_id}: predictor logged as {model_uri}")
        outcome = TrainOutcome(run.run_id, folder, model_uri, report=report)
        if config.register_as:
            uri, _version = registry.register(run.run_id, config.register_as, config.alias, config.tracking_uri)
            alias_text = f" (@{config.alias})" if config.alias else ""
            print(f"registered {uri}{alias_text}")
            outcome.registered_uri = uri
    return outcome


def evaluate(config: EvalConfig) -> EvalReport:
    """`seqsched eval`: metrics table, report.json and plots of a predictor on a length dataset."""
    from lengthpred.registry import load_predictor

    _require(config.predictor, "--predictor", "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a folder")
    _require(config.data, "--data", "a length dataset folder")
    check_writable(config.output_dir, "output_dir", folder=True)
    data = load_length_data(config.data, config.split, config.start, config.limit)
    predictor = load_predictor(config.predictor, config.tracking_uri)
    output_dir = Path(config.output_dir)
    report = evaluate_folder(predictor, config.predictor, data, config.target, output_dir)
    print(f"report: {output_dir / 'report.json'}")
    return report


def register(config: RegisterConfig) -> str:
    """`seqsched register`: a new version of a registered model from a run's predictor (and an alias)."""
    from lengthpred import registry

    _require(config.run, "--run", "the run id `seqsched train` printed")
    _require(config.name, "--name", "the registered model's name")
    uri, _ = registry.register(config.run, config.name, config.alias, config.tracking_uri)
    print(f"registered {uri}" + (f" (@{config.alias})" if config.alias else ""))
    return uri
