"""Apply a schedule on an engine: one entry point, `run()`, for every engine and launch.

The engine says how it serves (`engine.batching`): static engines run the scheduler's plan batch by batch
(serving.runner.static), continuous ones take the whole set with priorities and caps
(serving.runner.continuous). Under `accelerate launch` with several processes, each process serves a shard
balanced by predicted tokens and every process gets the gathered result in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from seqsched.distributed import Process, current_process, gather
from seqsched.engines.api import Batching, Engine
from seqsched.requests import Request
from seqsched.sharding import gather_in_order, shard_by_predicted_tokens, shard_loads
from serving.policy.scheduler import ScheduleConfig
from serving.runner.records import (
    BatchRecord,
    RequestRecord,
    RunMetrics,
    RunOptions,
    RunResult,
    check_predictions,
    run_metrics,
)

__all__ = ["BatchRecord", "RequestRecord", "RunMetrics", "RunOptions", "RunResult", "run"]


def run(
    engine: Engine,
    requests: Sequence[Request],
    predicted: Sequence[int] | None,
    cfg: ScheduleConfig,
    options: RunOptions | None = None,
    *,
    predictor_s: float = 0.0,
    shared_prefill_s: float = 0.0,
    tuning_s: float = 0.0,
    process: Process | None = None,
) -> RunResult:
    """Serve requests with a schedule; records come back in input order.

    predicted: one length per request (None only for vanilla); predictor_s and tuning_s: time already spent
    predicting and tuning the schedule, counted in the run's total time and latencies (shared_prefill_s of
    predictor_s prefilled prompts that generation reuses: reported as prefill, not prediction); process: this
    process's place in a data-parallel launch (default: found from the environment, one process without a launcher).
    """
    options = options or RunOptions()
    check_predictions(requests, predicted, cfg)
    process = process or current_process()
    if process.count <= 1:
        return _run_local(engine, requests, predicted, cfg, options, predictor_s, shared_prefill_s, tuning_s)
    weights = list(predicted) if predicted is not None else [1] * len(requests)
    groups = shard_by_predicted_tokens(weights, process.count)
    mine = groups[process.index]
    # The shard's requests keep their place in the whole set: for seeds, and for the caller's on_finished.
    positions = options.positions or tuple(range(len(requests)))
    options = replace(options, positions=tuple(positions[index] for index in mine))
    if options.on_finished is not None:
        report = options.on_finished
        options = replace(options, on_finished=lambda local, record: report(mine[local], record))
    local = _run_local(
        engine,
        [requests[index] for index in mine],
        None if predicted is None else [predicted[index] for index in mine],
        cfg,
        options,
        predictor_s,
        shared_prefill_s,
        tuning_s,
    )
    batches = [replace(batch, request_ids=tuple(mine[i] for i in batch.request_ids)) for batch in local.batches]
    shards = sorted(gather((process.index, local.records, batches, local.metrics.generation_s)), key=lambda s: s[0])
    records = gather_in_order(groups, [shard[1] for shard in shards], len(requests))
    all_batches = [batch for shard in shards for batch in shard[2]]
    generation_s = max(shard[3] for shard in shards)  # the processes run side by side: the slowest decides
    metrics = run_metrics(
        cfg,
        records,
        all_batches,
        generation_s,
        predictor_s,
        local.metrics.admission,
        shared_prefill_s=shared_prefill_s,
        tuning_s=tuning_s,
    )
    extra = {
        "processes": process.count,
        "shard_sizes": [len(group) for group in groups],
        "shard_predicted_tokens": shard_loads(weights, groups),
        "shard_generation_s": [shard[3] for shard in shards],
    }
    return RunResult(records, all_batches, metrics, cfg, extra)


def _run_local(
    engine: Engine,
    requests: Sequence[Request],
    predicted: Sequence[int] | None,
    cfg: ScheduleConfig,
    options: RunOptions,
    predictor_s: float,
    shared_prefill_s: float = 0.0,
    tuning_s: float = 0.0,
) -> RunResult:
    from tqdm import tqdm

    if engine.batching is Batching.CONTINUOUS:
        from serving.runner.continuous import ContinuousRun as Runner
    else:
        from serving.runner.static import StaticRun as Runner  # type: ignore[assignment]
    with tqdm(total=len(requests), unit="req", desc=cfg.strategy.value, disable=not options.progress) as bar:
        runner = Runner(engine, requests, predicted, cfg, options, predictor_s, bar.update, shared_prefill_s, tuning_s)
        return runner.run()
