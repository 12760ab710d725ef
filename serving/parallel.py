"""Data-parallel serving under `accelerate launch`: every process runs its own engine on a shard of the requests,
sharded by predicted length (equal total predicted tokens, not equal counts), and the main process gathers the
outputs back in input order.

    accelerate launch --config_file recipes/accelerate/multi-gpu-4.yaml -m serving.cli serve --input ... --predictor ...

Without `accelerate launch` (or with one process) this is a plain single-process run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from data_tools.io import Request
from serving.continuous import serve_requests
from serving.engine_api import Engine
from serving.runner import RunOptions, RunResult, compute_metrics
from serving.scheduler import ScheduleConfig
from serving.sharding import gather_in_order, shard_by_predicted_tokens, shard_loads


@dataclass(frozen=True)
class Process:
    """This process's place in the launch."""

    index: int = 0
    count: int = 1
    local_index: int = 0

    @property
    def main(self) -> bool:
        """True on the process that writes outputs."""
        return self.index == 0


def current_process() -> Process:
    """Rank and world size from `accelerate launch` (torchrun's environment); one process otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Process()
    import torch
    from accelerate import PartialState

    # Initialises the process group: nccl on GPUs; on CPU, accelerate needs cpu=True to go multi-process (gloo).
    state = PartialState(cpu=not torch.cuda.is_available())
    return Process(state.process_index, state.num_processes, state.local_process_index)


def pin_device(process: Process) -> None:
    """On GPUs, make `cuda` mean this process's own device before the model loads."""
    if process.count <= 1:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(process.local_index % torch.cuda.device_count())


def _gather(payload: object) -> list:
    from accelerate.utils import gather_object

    return gather_object([payload])


def distributed_run(
    engine: Engine,
    requests: Sequence[Request],
    predicted: Sequence[int] | None,
    cfg: ScheduleConfig,
    options: RunOptions | None = None,
    *,
    predictor_s: float = 0.0,
    process: Process | None = None,
) -> RunResult:
    """Serve this process's shard and gather every shard's records in input order (on every process)."""
    process = process or current_process()
    if process.count <= 1:
        return serve_requests(engine, requests, predicted, cfg, options, predictor_s=predictor_s)
    weights = list(predicted) if predicted is not None else [1] * len(requests)
    groups = shard_by_predicted_tokens(weights, process.count)
    mine = groups[process.index]
    local = serve_requests(
        engine,
        [requests[index] for index in mine],
        None if predicted is None else [predicted[index] for index in mine],
        cfg,
        options,
        predictor_s=predictor_s,
    )
    batches = [replace(batch, request_ids=tuple(mine[i] for i in batch.request_ids)) for batch in local.batches]
    shards = sorted(_gather((process.index, local.records, batches, local.metrics.generation_s)), key=lambda s: s[0])
    records = gather_in_order(groups, [shard[1] for shard in shards], len(requests))
    all_batches = [batch for shard in shards for batch in shard[2]]
    generation_s = max(shard[3] for shard in shards)  # the processes run side by side: the slowest decides
    metrics = compute_metrics(cfg, records, all_batches, generation_s, predictor_s)
    extra = {"processes": process.count, "shard_sizes": [len(group) for group in groups]}
    extra["shard_predicted_tokens"] = shard_loads(weights, groups)
    extra["shard_generation_s"] = [shard[3] for shard in shards]
    return RunResult(records, all_batches, metrics, cfg, extra)
