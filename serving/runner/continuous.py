"""Runs on a continuous-batching engine (vLLM, or the HF engine's slot pool): the engine admits requests into
running slots step by step, so static batches and VBS have nothing to act on. What predicted lengths buy there
is the admission order (shortest predicted first) and, with FCR, a per-request cap (the same rule as static
batches: serving.scheduler.request_cap) with the cut-short requests collected and recomputed together.

Strategies map to modes: vanilla -> FCFS (arrival order, the full limit); seqsch and vbs -> priority by
predicted length; fcr -> priority plus the caps and the recompute pass.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence

from seqsched.engines.api import ContinuousEngine, SamplingParams
from serving.runner.base import RunState
from serving.runner.records import BatchRecord
from serving.scheduler import Phase, ScheduleConfig, Strategy, adjusted_length, bin_cap, request_cap


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


def priorities(predicted: Sequence[int], cfg: ScheduleConfig) -> list[int]:
    """Engine priorities (lower runs first): the margin-adjusted predicted length."""
    return [adjusted_length(int(value), cfg) for value in predicted]


class ContinuousRun(RunState):
    """A run on a continuous engine: one submission, then one for the recomputed requests."""

    engine: ContinuousEngine

    def submit(
        self, ids: list[int], caps: list[int], prio: list[int] | None, phase: Phase, sampling: SamplingParams
    ) -> list[int]:
        """Submit requests with their caps; record them; return the ones cut short by their cap."""
        prompts = [self.prompt(index) for index in ids]
        budgets = [self.budget(index) for index in ids]
        offset = self.elapsed()
        started = time.perf_counter()
        timed = self.engine.submit(prompts, caps, prio, sampling, [self.seed(index) for index in ids])
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
        failed = [
            index
            for index, budget, item in zip(ids, budgets, timed, strict=True)
            if not self.finish(index, item.row, budget, phase, offset + item.finished_s)
        ]
        self.on_progress(len(ids) - len(failed))
        return failed

    def serve_group(self, sampling: SamplingParams, members: list[int]) -> None:
        """All members at once (by priority, capped for FCR), then the failures with their whole budget."""
        mode = mode_for(self.cfg.strategy)
        prio = None
        caps = [self.budget(index) for index in members]
        if mode is not ContinuousMode.FCFS:
            assert self.predicted is not None
            prio = priorities([self.predicted[index] for index in members], self.cfg)
        if mode is ContinuousMode.PRIORITY_CAPPED:
            assert prio is not None
            caps = [request_cap(bin_cap(value, self.cfg), budget) for budget, value in zip(caps, prio, strict=True)]
        failed = self.submit(members, caps, prio, Phase.INITIAL, sampling)
        if failed:
            budgets = [self.budget(index) for index in failed]
            again = None if prio is None else budgets  # shortest remaining first
            left = self.submit(failed, budgets, again, Phase.RECOMPUTE, sampling)
            assert not left, "recompute caps cover every budget"
