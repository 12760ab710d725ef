"""`seqsched serve`: scheduled batch inference over a request file with a chosen length predictor."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from data_tools.io import InputFormat, Request
from serving.backends import EngineKind, build_engine
from serving.batch_io import OutputFormat, read_batch_input, write_batch_output
from serving.config import parse_config, to_dict
from serving.engine_api import Engine
from serving.errors import SeqschedError
from serving.llm import ModelConfig
from serving.parallel import Process, current_process, distributed_run, pin_device
from serving.predictors import PredictorKind, RequestPredictor, load_predictor, parse_predictor
from serving.report import table, write_json
from serving.runner import RunOptions, RunResult
from serving.scheduler import ScheduleConfig, Strategy

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
    engine: EngineKind = EngineKind.HF
    """hf (static batches: the paper's VBS and FCR) or vllm (continuous batching: predicted lengths become
    request priorities, fcr adds per-request caps and the recompute pass; needs CUDA and `.[gpu]`)."""
    temperature: float = 0.0
    """Default temperature for requests that do not set one (0: greedy)."""
    top_p: float = 1.0
    seed: int = 0
    evict_finished: bool = False
    """Drop finished rows from the KV cache (faster; the paper's engine keeps them)."""
    progress: bool = True

    def schedule(self) -> ScheduleConfig:
        """The scheduling part of the config."""
        return ScheduleConfig(**{item.name: getattr(self, item.name) for item in dataclasses.fields(ScheduleConfig)})


def predict_and_run(
    engine: Engine,
    requests: Sequence[Request],
    predictor: RequestPredictor | None,
    cfg: ScheduleConfig,
    options: RunOptions | None = None,
    process: Process | None = None,
) -> RunResult:
    """Predict the lengths (timed, counted in the run) and serve the requests; under `accelerate launch` with
    several processes, each serves a shard balanced by predicted tokens and all get the gathered result."""
    predicted = None
    predictor_s = 0.0
    if predictor is not None and cfg.needs_predictions:
        started = time.perf_counter()
        predicted = predictor.predict_requests(requests)
        predictor_s = time.perf_counter() - started
    return distributed_run(engine, requests, predicted, cfg, options, predictor_s=predictor_s, process=process)


def metrics_path(output: str | Path) -> Path:
    """Where a run's metrics JSON goes: beside the output."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(".jsonl") + ".metrics.json")


def serve_main(argv: Sequence[str]) -> int:
    """`seqsched serve`."""
    config = parse_config(ServeConfig, argv, prog="seqsched serve")
    if not config.input:
        raise SeqschedError("--input is required (a file of requests, e.g. OpenAI Batch JSONL)")
    spec = parse_predictor(config.predictor)
    if spec.kind is PredictorKind.NONE and config.strategy is not Strategy.VANILLA:
        raise SeqschedError(
            f"--strategy {config.strategy.value} orders requests by predicted length: give --predictor "
            "(models:/NAME@ALIAS, oracle:FILE, perception) or use --strategy vanilla"
        )
    batch = read_batch_input(config.input, config.input_format)
    for bad in batch.errors:
        print(f"error line: {bad.error}")
    results: list = []
    summary: dict[str, object] = {}
    extra: dict[str, object] = {}
    process = current_process()
    if batch.requests:
        pin_device(process)
        engine = build_engine(config.engine, config.model, evict_finished=config.evict_finished)
        predictor = (
            load_predictor(spec, engine, config.tracking_uri) if config.strategy is not Strategy.VANILLA else None
        )
        options = RunOptions(
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed,
            progress=config.progress and process.main,
        )
        result = predict_and_run(engine, batch.requests, predictor, config.schedule(), options, process)
        results, extra = result.records, result.extra
        summary = result.metrics.row()
        if not process.main:
            return 0  # the main process writes the gathered outputs
        print(table([summary], SUMMARY_COLUMNS))
    write_batch_output(config.output, batch, results, config.output_format, model=config.model.spec)
    metrics = {
        **summary,
        "input_records": len(batch.records),
        "input_errors": len(batch.errors),
        "predictor": str(spec),
        **extra,
        "config": to_dict(config),
    }
    path = write_json(metrics_path(config.output), metrics)
    print(f"served {len(results)} of {len(batch.records)} records ({len(batch.errors)} error lines)")
    print(f"outputs: {config.output}\nmetrics: {path}")
    return 0
