"""Scheduling on a continuous-batching engine (vLLM): predicted lengths become request priorities.

vLLM batches by itself, step by step, so the paper's static batches and VBS have nothing to act on. What the
prediction still buys there: admission order (`scheduling_policy="priority"`, shortest predicted first, which
cuts mean latency and the queue's head-of-line blocking) and, for FCR, a per-request `max_tokens` at the
request's bin cap with the cut-short requests collected and recomputed together at the end.

Strategies map to modes: vanilla -> FCFS (all requests at once, arrival order, the full limit); seqsch and
vbs -> priority by predicted length; fcr -> priority plus the caps and the recompute pass.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from typing import Protocol

from data_tools.io import Request
from serving.engine_api import Engine, SamplingParams
from serving.errors import SeqschedError
from serving.runner import BatchRecord, RunOptions, RunResult, _Run, check_predictions
from serving.scheduler import Phase, ScheduleConfig, Strategy, adjusted_length, bin_cap


class ContinuousMode(enum.Enum):
    """How requests are submitted to a continuous-batching engine."""

    FCFS = "fcfs"
    PRIORITY = "priority"
    PRIORITY_CAPPED = "priority-capped"


def mode_for(strategy: Strategy) -> ContinuousMode:
    """The continuous-batching counterpart of a static-batch strategy."""
    if strategy is Strategy.VANILLA:
        return ContinuousMode.FCFS
    if strategy is Strategy.FCR:
        return ContinuousMode.PRIORITY_CAPPED
    return ContinuousMode.PRIORITY


class SubmittingEngine(Engine, Protocol):
    """An engine that takes a whole set of requests with per-request caps and priorities (VLLMEngine)."""

    def submit(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_tokens: Sequence[int],
        priorities: Sequence[int] | None = None,
        sampling: SamplingParams = ...,
        seeds: Sequence[int] | None = None,
    ) -> list:  # list[TimedRow]
        ...


def priorities(predicted: Sequence[int], cfg: ScheduleConfig) -> list[int]:
    """vLLM priorities (lower runs first): the margin-adjusted predicted length."""
    return [adjusted_length(int(value), cfg) for value in predicted]


class _ContinuousRun(_Run):
    def submit(self, ids: list[int], caps: list[int], prio: list[int] | None, phase: Phase, sampling) -> list[int]:
        engine: SubmittingEngine = self.engine  # type: ignore[assignment]
        prompts = [self.state(index).prompt_ids + self.state(index).prefix for index in ids]
        seeds = [self.options.seed + index for index in ids]
        offset = time.perf_counter() - self.started + self.predictor_s
        started = time.perf_counter()
        timed = engine.submit(prompts, caps, prio, sampling, seeds)
        rows = [item.row for item in timed]
        self.batches.append(
            BatchRecord(
                phase=phase,
                request_ids=tuple(ids),
                max_new_tokens=max(caps),
                engine_steps=max(caps),
                decode_steps=max(row.finish_step for row in rows),
                row_steps=sum(row.finish_step for row in rows),
                prompt_tokens=sum(len(prompt) for prompt in prompts),
                padded_prompt_tokens=sum(len(prompt) for prompt in prompts),
                prefill_s=0.0,
                decode_s=time.perf_counter() - started,
            )
        )
        failed = []
        for index, item in zip(ids, timed, strict=True):
            budget = self.limits[index] - len(self.state(index).prefix)
            if not self.finish(index, item.row, budget, phase, offset + item.finished_s):
                failed.append(index)
        self.on_progress(len(ids) - len(failed))
        return failed

    def run(self) -> RunResult:
        mode = mode_for(self.cfg.strategy)
        for sampling, members in self.sampling_groups():
            prio = None
            caps = [self.limits[index] for index in members]
            if mode is not ContinuousMode.FCFS:
                assert self.predicted is not None
                prio = priorities([self.predicted[index] for index in members], self.cfg)
            if mode is ContinuousMode.PRIORITY_CAPPED:
                assert prio is not None
                caps = [min(limit, bin_cap(value, self.cfg)) for limit, value in zip(caps, prio, strict=True)]
            failed = self.submit(members, caps, prio, Phase.INITIAL, sampling)
            if failed:
                budgets = [self.limits[index] - len(self.state(index).prefix) for index in failed]
                again = None if prio is None else budgets  # shortest remaining first
                left = self.submit(failed, budgets, again, Phase.RECOMPUTE, sampling)
                assert not left, "recompute caps cover every budget"
        generation_s = time.perf_counter() - self.started
        records = [record for record in self.records if record is not None]
        return RunResult(records, self.batches, self.metrics(records, generation_s), self.cfg)


def run_continuous(
    engine: SubmittingEngine,
    requests: Sequence[Request],
    predicted: Sequence[int] | None,
    cfg: ScheduleConfig,
    options: RunOptions | None = None,
    *,
    predictor_s: float = 0.0,
) -> RunResult:
    """Serve requests on a continuous-batching engine; outputs in input order, metrics as for `runner.run`."""
    options = options or RunOptions()
    if not hasattr(engine, "submit"):
        raise SeqschedError("continuous scheduling needs an engine with submit() (the vLLM engine)")
    check_predictions(requests, predicted, cfg)
    return _ContinuousRun(engine, requests, predicted, cfg, options, predictor_s, lambda _: None).run()


def serve_requests(
    engine: Engine,
    requests: Sequence[Request],
    predicted: Sequence[int] | None,
    cfg: ScheduleConfig,
    options: RunOptions | None = None,
    *,
    predictor_s: float = 0.0,
) -> RunResult:
    """The right runner for the engine: continuous (priorities) for an engine with submit(), else static batches."""
    if hasattr(engine, "submit"):
        return run_continuous(engine, requests, predicted, cfg, options, predictor_s=predictor_s)  # type: ignore[arg-type]
    from serving.runner import run

    return run(engine, requests, predicted, cfg, options, predictor_s=predictor_s)
