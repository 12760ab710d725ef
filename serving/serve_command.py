"""`seqsched serve`: scheduled batch inference over a request file with a chosen length predictor.

A serve run never loses finished work: each request's result goes to a checkpoint beside the output as soon as
it is known (serving.runner.checkpoint), a killed run resumes with the same command, and the output (one line per input
record, in input order) is written atomically at the end. A request that cannot be served (unreadable, too long
for the model, out of memory even alone) gets an error line; the rest are served.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from seqsched.config import to_dict
from seqsched.distributed import Process, current_process, gather, pin_device
from seqsched.engines.api import Batching, Engine, FinishReason, takes_reservations
from seqsched.engines.config import EngineConfig
from seqsched.errors import SeqschedError, require
from seqsched.files import check_writable, exclusive_lock, write_json
from seqsched.model_specs import ModelConfig
from seqsched.requests import InputFormat, Request
from seqsched.tables import table
from serving.batch_io import BatchInput, OutputFormat, read_batch_input, write_batch_output
from serving.measure.autotune import (
    Tuner,
    all_at_once,
    budget_only,
    cost_engine,
    engine_cost_config,
    kv_model,
    own_limits,
    prompt_lengths,
    tuner_for,
)
from serving.measure.costmodel import CostConfig
from serving.measure.memory import MemoryConfig
from serving.policy.kv_tuning import KVTuneConfig, decide_kv
from serving.policy.scheduler import Admission, KVAdmission, ScheduleConfig, Strategy
from serving.policy.workload import TuneConfig
from serving.predictors import (
    PredictorSource,
    PredictorSpec,
    RequestPredictor,
    parse_predictor,
    resolve_predictor,
)
from serving.runner import RequestRecord, RunOptions, RunResult, run
from serving.runner.checkpoint import LOCK_FILE, ServeCheckpoint, working_dir
from serving.runner.prompt_checks import Rejection, rejections

SUMMARY_COLUMNS = (
    "strategy",
    "requests",
    "samples_per_s",
    "tokens_per_s",
    "effective_token_ratio",
    "failure_ratio",
    "recompute_share",
    "latency_mean_s",
    "latency_p50_s",
    "latency_p99_s",
    "time_to_half_s",
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
    """`--engine.kind auto` (vLLM where installed, else hf), `vllm`, or `hf` with static batches (the paper's VBS
    and FCR) or `--engine.batching continuous --engine.slots N` (a pool of N rows refilled at every step). On a
    continuous engine `--policy` picks the admission order (fcfs, sjf, sjf-fcr; auto: from --strategy)."""
    temperature: float = 0.0
    """Default temperature for requests that do not set one (0: greedy)."""
    top_p: float = 1.0
    seed: int = 0
    max_prompt_tokens: int | None = None
    """Requests whose prompt has more tokens get an error line instead of being served. (A prompt that with
    its max_tokens does not fit the model's context always does.)"""
    resume: bool = True
    """Resume an unfinished run on the same --output (its checkpoint in OUTPUT.partial); false starts over."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """With `--tune.data HELD_OUT_LENGTHS` (or `--tune.lengths FILE`, no datasets library): margin, bins and VBS
    tuned by simulation on these requests' predicted and prompt lengths with the predictor's held-out errors; vanilla
    batches serve when the tuned schedule is not predicted to beat them by `--tune.min_gain` (static engine, fcr/vbs
    strategies)."""
    cost: CostConfig = field(default_factory=CostConfig)
    """The step cost tuning simulates with: measured once per machine and model, then cached."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    """The KV-cache budget of a batch (static engine): rows x (prompt + cap) stays within it."""
    always_order: bool = False
    """On a continuous engine, order by predicted length even when every request fits at once. By default such a
    run serves FCFS without predicting: all requests run together, so no order changes who runs when and the
    prediction would only cost its time (the demo's oracle run sets this to show what ordering buys)."""
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        most = self.max_prompt_tokens
        require(most is None or most >= 1, "max_prompt_tokens", f"must be >= 1 (or unset), got {most}")


@dataclass
class ServeOutcome:
    """What a serve run wrote and measured."""

    output: Path
    metrics_path: Path
    result: RunResult | None
    """This run's generation; None when nothing was left to generate (every line an error, or every request
    finished by an earlier run) or on a non-main data-parallel process."""


def predict_and_run(
    engine: Engine,
    requests: Sequence[Request],
    predictor: RequestPredictor | None,
    cfg: ScheduleConfig,
    options: RunOptions | None = None,
    process: Process | None = None,
    tuner: Tuner | None = None,
    always_order: bool = False,
) -> RunResult:
    """Predict the lengths (timed, counted in the run), tune the schedule on them when a tuner is given (timed,
    counted too; vanilla batches when the schedule is not predicted to win) and serve the requests (see
    serving.runner.run). On a continuous engine where every request fits at once, FCFS serves without predicting
    unless always_order (serving.measure.autotune.all_at_once)."""
    predicted = None
    predictor_s = 0.0
    by_quantile: dict[float, list[int]] = {}
    extra: dict[str, Any] = {}
    if predictor is not None and cfg.needs_predictions and engine.batching is Batching.CONTINUOUS and not always_order:
        stats = tuner.length_stats if tuner is not None else None
        fallback = all_at_once(engine, prompt_lengths(engine, requests), own_limits(requests, cfg.limit), stats)
        if fallback is not None:  # no order to choose: the prediction would only cost its time
            print(f"{fallback}: FCFS serves, no prediction", flush=True)
            cfg = replace(cfg, strategy=Strategy.VANILLA, policy=Admission.FCFS, kv_admission=KVAdmission.GREEDY)
            extra["fallback"] = fallback
    if predictor is not None and cfg.needs_predictions:
        started = time.perf_counter()
        if tuner is not None and tuner.errors_by_quantile and cfg.binned and cfg.kv_admission is not KVAdmission.AUTO:
            # Risk-aware caps: every quantile's lengths from one prediction; the tuner picks one below.
            by_quantile = predictor.predict_quantiles(requests, list(tuner.errors_by_quantile))  # type: ignore[attr-defined]
            predicted = predictor.predict_requests(requests) if not by_quantile else None
        else:
            predicted = predictor.predict_requests(requests)
        predictor_s = time.perf_counter() - started
    shared = getattr(predictor, "prefill_s", 0.0) if predictor is not None and cfg.needs_predictions else 0.0
    tuning_s = 0.0
    if cfg.kv_admission is KVAdmission.AUTO:
        model = kv_model(engine)
        if tuner is None or predicted is None or model is None:
            print("--kv_admission auto: no held-out errors (--tune.data) or no KV bound: vLLM's greedy rule serves")
            cfg = replace(cfg, kv_admission=KVAdmission.GREEDY)
        else:
            prompts = prompt_lengths(engine, requests)
            limits = own_limits(requests, cfg.limit)
            settings = KVTuneConfig.from_tune(tuner.tune, takes_reservations(engine))
            kv_decision = decide_kv(
                predicted, prompts, limits, tuner.errors, model, tuner.cost, cfg, settings, predictor_s=predictor_s
            )
            print(kv_decision.describe(), flush=True)
            tuning_s = kv_decision.tuning_s
            extra["kv_admission"] = kv_decision.as_dict()
            cfg = kv_decision.policy.config(cfg)
    elif tuner is not None:
        cfg = tuner.apply_budget(cfg)
        if by_quantile:
            prompts = prompt_lengths(engine, requests)
            limits = own_limits(requests, cfg.limit)
            quantile, decision = tuner.decide_quantiles(by_quantile, prompts, limits, cfg, cfg.batch_size)
            predicted = by_quantile[quantile]
            print(f"lengths at the {quantile:g} quantile of each predicted distribution", flush=True)
            tuning_s = decision.tuning_s
            print(decision.describe(), flush=True)
            extra["schedule"] = decision.as_dict()
            cfg = decision.config
        elif predicted is not None and cfg.binned and tuner.errors is not None:
            prompts = prompt_lengths(engine, requests)
            decision = tuner.decide(predicted, prompts, own_limits(requests, cfg.limit), cfg, cfg.batch_size)
            tuning_s = decision.tuning_s
            print(decision.describe(), flush=True)
            extra["schedule"] = decision.as_dict()
            cfg = decision.config  # vanilla batches ignore the predictions (kept in the records)
    try:
        result = run(
            engine,
            requests,
            predicted,
            cfg,
            options,
            predictor_s=predictor_s,
            shared_prefill_s=shared,
            tuning_s=tuning_s,
            process=process,
        )
    finally:
        release = getattr(predictor, "release", None)
        if release is not None:
            release()  # prefills a probe kept for the run's batches
    result.extra.update(extra)
    if tuner is not None:
        result.extra.update(tuning=tuner.info)
    return result


def serve_tuner(
    config: ServeConfig, engine: Engine, requests: Sequence[Request], predictor: RequestPredictor | None
) -> Tuner | None:
    """A static engine's tuner: the KV budget always; the step cost and held-out errors when --tune.data (or
    --tune.lengths) is set for a binned strategy (a continuous engine schedules its own memory and has no batches to
    tune)."""
    if engine.batching is not Batching.STATIC:
        if config.kv_admission is KVAdmission.AUTO and config.tune.held_out and predictor is not None:
            model = kv_model(engine)
            if model is None:
                raise SeqschedError(
                    "--kv_admission auto needs a KV-bounded engine (vLLM, or --engine.kv_budget_tokens)"
                )
            # The step cost is timed on the serving engine: its probes must fit its KV cache and its sequences.
            timed = replace(config, cost=engine_cost_config(engine, config.cost))
            return tuner_for(timed, cost_engine(engine), prompt_lengths(engine, requests), predictor)
        if config.tune.held_out:
            print("--tune: a continuous-batching engine has no static batches to tune; serving as configured")
        return None
    if not (config.tune.held_out and config.binned and predictor is not None):
        return budget_only(config)  # the budget alone: no decision without held-out errors
    return tuner_for(config, engine, prompt_lengths(engine, requests), predictor)


def metrics_path(output: str | Path) -> Path:
    """Where a run's metrics JSON goes: beside the output."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(".jsonl") + ".metrics.json")


def serve_settings(config: ServeConfig, batch: BatchInput) -> dict[str, Any]:
    """What decides a request's output: a resumed run must have the same. Scheduling options (strategy, predictor,
    bins, batch sizes) may change: a request's output does not depend on its batch (its seed is its position)."""
    digest = hashlib.sha256()
    for record in batch.records:
        request = record.request
        content = None
        if request is not None:
            content = [request.id, request.prompt, list(request.messages), request.max_tokens, request.temperature]
        digest.update(json.dumps([record.position, record.custom_id, content], default=str).encode() + b"\n")
    return {
        "input_content": digest.hexdigest()[:16],
        "model": config.model.spec,
        "device": config.model.device.value,
        "dtype": config.model.dtype.value,
        "engine": config.engine.resolved_kind(config.model.random_init is not None).value,
        "system_prompt": config.engine.system_prompt,
        "stop_token_ids": list(config.engine.stop_token_ids),
        "limit": config.limit,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "seed": config.seed,
    }


def _rejected_record(request: Request, rejection: Rejection) -> RequestRecord:
    return RequestRecord(
        id=request.id,
        text="",
        token_ids=[],
        finish_reason=FinishReason.LENGTH,
        prompt_tokens=rejection.prompt_tokens,
        limit=rejection.limit,
        predicted=None,
        error=rejection.problem,
        error_code=rejection.code,
    )


def serve(config: ServeConfig, engine: Engine | None = None) -> ServeOutcome:
    """`seqsched serve`: read the batch, predict, schedule, generate, write outputs (in input order) and metrics;
    resumes an unfinished run on the same output.

    engine: an already loaded engine to serve with (the demo's); default: load config.model into config.engine.
    """
    if not config.input:
        raise SeqschedError("--input is required (a file of requests, e.g. OpenAI Batch JSONL)")
    spec = parse_predictor(config.predictor)
    if config.policy is not Admission.AUTO and not config.engine.continuous:
        raise SeqschedError(
            f"--policy {config.policy.value} orders admission on a continuous engine: add --engine.batching "
            "continuous (or --engine.kind vllm), or leave --policy auto"
        )
    if config.kv_admission is not KVAdmission.GREEDY and not config.engine.continuous:
        raise SeqschedError(
            f"--kv_admission {config.kv_admission.value} admits by KV reservations on a continuous engine: use vLLM "
            "(--engine.kind vllm) or our pool (--engine.batching continuous --engine.kv_budget_tokens N)"
        )
    if spec.kind is PredictorSource.NONE and config.needs_predictions:
        what = f"--strategy {config.strategy.value}"
        if config.policy is not Admission.AUTO:
            what = f"--policy {config.policy.value}"
        raise SeqschedError(
            f"{what} orders requests by predicted length: give --predictor "
            "(models:/NAME@ALIAS, oracle:FILE, perception) or use --strategy vanilla / --policy fcfs"
        )
    process = current_process()
    output, path, work = Path(config.output), metrics_path(config.output), working_dir(config.output)
    if process.main:  # before any model loads: an unwritable output must not cost the work
        for target in (output, path):
            check_writable(target, "output")
        check_writable(work, "output", folder=True)
    batch = read_batch_input(config.input, config.input_format)
    requests = batch.requests
    if process.main:
        for bad in batch.errors:
            print(f"error line: {bad.error}")
    checkpoint = ServeCheckpoint(work, process.index)
    with contextlib.ExitStack() as stack:
        finished: dict[int, RequestRecord] = {}
        if process.main:
            work.mkdir(parents=True, exist_ok=True)
            busy = f"another seqsched serve is writing {output}: wait for it to finish, or choose another --output"
            stack.enter_context(exclusive_lock(work / LOCK_FILE, busy))
            checkpoint.start(serve_settings(config, batch), config.resume)
            finished = checkpoint.load([request.id for request in requests])
            if finished:
                torn = " (a torn last line was dropped)" if checkpoint.dropped_torn_lines else ""
                print(f"resuming: {len(finished)} of {len(requests)} requests were finished in {work}{torn}")
        done = set(finished)
        if process.count > 1:  # every process must agree on what is left to serve
            done = set(gather(sorted(done))[0])
        result, rejected = _serve_pending(config, spec, engine, batch, done, checkpoint, process)
        if not process.main:
            return ServeOutcome(output, path, None)  # the main process writes the gathered outputs
        records = _assemble(requests, finished, rejected, result, done)
        write_batch_output(output, batch, records, config.output_format, config.model.spec)
        summary = result.metrics.row() if result else {}
        if result:
            print(table([summary], SUMMARY_COLUMNS))
        metrics = {
            **summary,
            "input_records": len(batch.records),
            "input_errors": len(batch.errors),
            "resumed_requests": len(finished),
            "rejected_requests": len(rejected),
            "error_lines": len(batch.errors) + sum(record.error is not None for record in records),
            "predictor": str(spec),
            **(result.extra if result else {}),
            "config": to_dict(config),
        }
        write_json(path, metrics)
        checkpoint.remove()
    served = len(result.records) if result else 0
    resumed = f", {len(finished)} resumed from an earlier run" if finished else ""
    print(f"served {served} of {len(batch.records)} records{resumed} ({metrics['error_lines']} error lines)")
    print(f"outputs: {config.output}\nmetrics: {path}")
    return ServeOutcome(output, path, result)


def _serve_pending(
    config: ServeConfig,
    spec: PredictorSpec,
    engine: Engine | None,
    batch: BatchInput,
    done: set[int],
    checkpoint: ServeCheckpoint,
    process: Process,
) -> tuple[RunResult | None, dict[int, Rejection]]:
    """Serve the requests without a result yet; each finished one goes to the checkpoint as it finishes."""
    requests = batch.requests
    pending = [index for index in range(len(requests)) if index not in done]
    if not pending:
        return None, {}
    if engine is None:
        from serving.measure.slots import serving_engine

        pin_device(process)
        engine_config = config.engine if config.kv_admission is KVAdmission.GREEDY else config.engine.reserving()
        engine = serving_engine(engine_config, config.model, [requests[index] for index in pending], config.limit)
    turned_away = rejections(engine, [requests[index] for index in pending], config.limit, config.max_prompt_tokens)
    rejected = {pending[local]: why for local, why in turned_away.items()}
    if process.main:
        positions = [record.position for record in batch.records if record.request is not None]
        for index, why in rejected.items():
            print(f"error line: {batch.path}:{positions[index]}: {why.problem}")
    todo = [index for index in pending if index not in rejected]
    if not todo:
        return None, rejected
    predictor = resolve_predictor(spec, engine, config.tracking_uri) if config.needs_predictions else None
    options = RunOptions(
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
        progress=config.progress and process.main,
        positions=tuple(todo),
        on_finished=lambda local, record: checkpoint.append(todo[local], record),
    )
    serving = [requests[index] for index in todo]
    tuner = serve_tuner(config, engine, serving, predictor)
    try:
        result = predict_and_run(
            engine, serving, predictor, config.schedule(), options, process, tuner, config.always_order
        )
    except KeyboardInterrupt:
        if process.main:
            print(
                f"\nstopped: {len(done) + checkpoint.appended} finished requests are kept in {checkpoint.folder}; "
                "run the same command again to resume"
            )
        raise
    return result, rejected


def _assemble(
    requests: Sequence[Request],
    finished: dict[int, RequestRecord],
    rejected: dict[int, Rejection],
    result: RunResult | None,
    done: set[int],
) -> list[RequestRecord]:
    """Every readable request's record in input order: resumed, rejected or served now."""
    served = iter(result.records if result else [])
    records = []
    for index, request in enumerate(requests):
        if index in finished:
            records.append(finished[index])
        elif index in rejected:
            records.append(_rejected_record(request, rejected[index]))
        else:
            assert index not in done, "a request finished by an earlier run is in the checkpoint"
            records.append(next(served))
    assert next(served, None) is None, "every served record has its request"
    return records
