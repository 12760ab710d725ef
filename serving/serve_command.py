"""`seqsched serve`: scheduled batch inference over a request file with a chosen length predictor."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqsched.config import to_dict
from seqsched.distributed import Process, current_process, pin_device
from seqsched.engines.api import Batching, Engine
from seqsched.engines.config import EngineConfig
from seqsched.errors import SeqschedError
from seqsched.files import write_json
from seqsched.model_specs import ModelConfig
from seqsched.requests import InputFormat, Request
from seqsched.tables import table
from serving.autotune import Tuner, own_limits, prepare_tuner, prompt_lengths
from serving.batch_io import OutputFormat, read_batch_input, write_batch_output
from serving.costmodel import CostConfig
from serving.memory import MemoryConfig, kv_budget
from serving.predictors import PredictorSource, RequestPredictor, parse_predictor, resolve_predictor
from serving.runner import RunOptions, RunResult, run
from serving.scheduler import ScheduleConfig, Strategy
from serving.stepcost import StepCost
from serving.workload import TuneConfig

SUMMARY_COLUMNS = (
    "strategy",
    "requests",
    "samples_per_s",
    "tokens_per_s",
    "effective_token_ratio",
    "failure_ratio",
    "recompute_share",
    "latency_p50_s",
    "latency_p99_s",
    "predictor_share",
    "total_s",
)


@dataclass(frozen=True)
class ServeConfig(ScheduleConfig):
    """Serve a batch of requests: predict their lengths, schedule, generate, write outputs in input order."""

    input: str = ""
    """Requests: OpenAI Batch JSONL, plain JSONL {id, prompt}, ShareGPT/Alpaca JSON(L) or a dataset folder."""
    output: str = "outputs/serve.jsonl"
    """One line per input record, in input order; metrics go beside it as <name>.metrics.json."""
    input_format: InputFormat = InputFormat.AUTO
    output_format: OutputFormat = OutputFormat.AUTO
    """auto: OpenAI Batch output for OpenAI Batch input, plain JSONL otherwise."""
    predictor: str = "none"
    """models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN/PATH, oracle:FILE, perception or none (vanilla only)."""
    tracking_uri: str | None = None
    """MLflow tracking URI for models:/ and runs:/ predictors (default: MLFLOW_TRACKING_URI or ./mlflow.db)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    """`--engine.kind hf` (static batches: the paper's VBS and FCR) or `vllm` (continuous batching: predicted
    lengths become request priorities, fcr adds per-request caps and the recompute pass; CUDA and `.[gpu]`)."""
    temperature: float = 0.0
    """Default temperature for requests that do not set one (0: greedy)."""
    top_p: float = 1.0
    seed: int = 0
    tune: TuneConfig = field(default_factory=TuneConfig)
    """With `--tune.data HELD_OUT_LENGTHS`: margin, bins and VBS tuned by simulation on these requests' predicted
    and prompt lengths with the predictor's held-out errors; vanilla batches serve when the tuned schedule is not
    predicted to beat them by `--tune.min_gain` (static engine, fcr/vbs strategies)."""
    cost: CostConfig = field(default_factory=CostConfig)
    """The step cost tuning simulates with: measured once per machine and model, then cached."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    """The KV-cache budget of a batch (static engine): rows x (prompt + cap) stays within it."""
    progress: bool = True


@dataclass
class ServeOutcome:
    """What a serve run wrote and measured."""

    output: Path
    metrics_path: Path
    result: RunResult | None
    """None when no record could be served (every line an error) or on a non-main data-parallel process."""


def predict_and_run(
    engine: Engine,
    requests: Sequence[Request],
    predictor: RequestPredictor | None,
    cfg: ScheduleConfig,
    options: RunOptions | None = None,
    process: Process | None = None,
    tuner: Tuner | None = None,
) -> RunResult:
    """Predict the lengths (timed, counted in the run), tune the schedule on them when a tuner is given (timed,
    counted too; vanilla batches when the schedule is not predicted to win) and serve the requests (see
    serving.runner.run)."""
    predicted = None
    predictor_s = 0.0
    if predictor is not None and cfg.needs_predictions:
        started = time.perf_counter()
        predicted = predictor.predict_requests(requests)
        predictor_s = time.perf_counter() - started
    tuning_s = 0.0
    extra: dict[str, Any] = {}
    if tuner is not None:
        cfg = tuner.apply_budget(cfg)
        if predicted is not None and cfg.binned and tuner.errors is not None:
            prompts = prompt_lengths(engine, requests)
            decision = tuner.decide(predicted, prompts, own_limits(requests, cfg.limit), cfg, cfg.batch_size)
            tuning_s = decision.tuning_s
            print(decision.describe(), flush=True)
            extra["schedule"] = decision.as_dict()
            cfg = decision.config  # vanilla batches ignore the predictions (kept in the records)
    result = run(engine, requests, predicted, cfg, options, predictor_s=predictor_s, tuning_s=tuning_s, process=process)
    if tuner is not None:
        result.extra.update(extra, tuning=tuner.info)
    return result


def serve_tuner(
    config: ServeConfig, engine: Engine, requests: Sequence[Request], predictor: RequestPredictor | None
) -> Tuner | None:
    """A static engine's tuner: the KV budget always; the step cost and held-out errors when --tune.data is set
    for a binned strategy (a continuous engine schedules its own memory and has no batches to tune)."""
    if engine.batching is not Batching.STATIC:
        if config.tune.data:
            print("--tune.data: a continuous-batching engine has no static batches to tune; serving as configured")
        return None
    if not (config.tune.data and config.binned and predictor is not None):
        budget = kv_budget(config.token_budget, config.memory, config.model)
        print(budget.describe())
        return Tuner(StepCost(), budget, config.tune)  # the budget alone: no decision without held-out errors
    return prepare_tuner(
        engine,
        config.model,
        config.engine.kind.value,
        config.engine.evict_finished,
        config.cost,
        config.memory,
        config.tune,
        config.token_budget,
        config.limit,
        prompt_lengths(engine, requests),
        predictor,
        progress=config.progress,
    )


def metrics_path(output: str | Path) -> Path:
    """Where a run's metrics JSON goes: beside the output."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(".jsonl") + ".metrics.json")


def serve(config: ServeConfig, engine: Engine | None = None) -> ServeOutcome:
    """`seqsched serve`: read the batch, predict, schedule, generate, write outputs (in input order) and metrics.

    engine: an already loaded engine to serve with (the demo's); default: load config.model into config.engine.
    """
    if not config.input:
        raise SeqschedError("--input is required (a file of requests, e.g. OpenAI Batch JSONL)")
    spec = parse_predictor(config.predictor)
    if spec.kind is PredictorSource.NONE and config.strategy is not Strategy.VANILLA:
        raise SeqschedError(
            f"--strategy {config.strategy.value} orders requests by predicted length: give --predictor "
            "(models:/NAME@ALIAS, oracle:FILE, perception) or use --strategy vanilla"
        )
    batch = read_batch_input(config.input, config.input_format)
    for bad in batch.errors:
        print(f"error line: {bad.error}")
    result: RunResult | None = None
    summary: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    process = current_process()
    if batch.requests:
        if engine is None:
            from seqsched.engines.selection import build_engine

            pin_device(process)
            engine = build_engine(config.engine, config.model)
        predictor = (
            resolve_predictor(spec, engine, config.tracking_uri) if config.strategy is not Strategy.VANILLA else None
        )
        options = RunOptions(
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed,
            progress=config.progress and process.main,
        )
        tuner = serve_tuner(config, engine, batch.requests, predictor)
        result = predict_and_run(engine, batch.requests, predictor, config.schedule(), options, process, tuner)
        extra = result.extra
        summary = result.metrics.row()
        if process.main:
            print(table([summary], SUMMARY_COLUMNS))
    path = metrics_path(config.output)
    if not process.main:
        return ServeOutcome(Path(config.output), path, None)  # the main process writes the gathered outputs
    write_batch_output(config.output, batch, result.records if result else [], config.output_format, config.model.spec)
    metrics = {
        **summary,
        "input_records": len(batch.records),
        "input_errors": len(batch.errors),
        "predictor": str(spec),
        **extra,
        "config": to_dict(config),
    }
    write_json(path, metrics)
    served = len(result.records) if result else 0
    print(f"served {served} of {len(batch.records)} records ({len(batch.errors)} error lines)")
    print(f"outputs: {config.output}\nmetrics: {path}")
    return ServeOutcome(Path(config.output), path, result)
