"""Runs on a continuous-batching engine (vLLM, or the HF engine's slot pool): the engine admits requests into
running slots step by step, so static batches and VBS have nothing to act on. What predicted lengths buy there
is the admission order (shortest predicted first) and, with FCR, a per-request cap (the same rule as static
batches: serving.policy.scheduler.request_cap) with the cut-short requests collected and recomputed together.

The order and caps come from an admission policy (serving.policy.admission): cfg.policy, or by default the strategy's
counterpart (vanilla -> FCFS, seqsch and vbs -> SJF, fcr -> SJF with FCR caps and the recompute pass).
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace

from seqsched.engines.api import ContinuousEngine, SamplingParams, takes_reservations
from seqsched.errors import SeqschedError
from serving.policy.admission import Pass, policy_for, with_reservations
from serving.policy.scheduler import KVAdmission, Phase
from serving.runner.base import RunState
from serving.runner.records import BatchRecord


class ContinuousRun(RunState):
    """A run on a continuous engine: one submission, then one for the recomputed requests."""

    engine: ContinuousEngine

    def admission(self) -> str:
        """The policy deciding this run's order and caps."""
        return policy_for(self.cfg).name.value

    def submit(self, ids: list[int], submission: Pass, phase: Phase, sampling: SamplingParams) -> list[int]:
        """Submit requests with their caps and priorities; record them; return the ones cut short by their cap."""
        prompts = [self.prompt(index) for index in ids]
        budgets = [self.budget(index) for index in ids]
        offset = self.elapsed()
        started = time.perf_counter()
        seeds = [self.seed(index) for index in ids]
        extra = {}
        if submission.reserves is not None:
            if not takes_reservations(self.engine):
                raise SeqschedError(
                    f"--kv_admission {self.cfg.kv_admission.value} needs an engine that admits by KV reservations: "
                    "vLLM (seqsched's scheduler class) or our pool with --engine.kv_budget_tokens"
                )
            extra["reserves"] = submission.reserves
            extra["hold_reservations"] = submission.hold
        timed = self.engine.submit(prompts, submission.caps, submission.priorities, sampling, seeds, **extra)
        wall_s = time.perf_counter() - started
        rows = [item.row for item in timed]
        stats = getattr(self.engine, "last_stats", None)
        prefill_s = stats.prefill_s if stats is not None else 0.0
        if stats is not None:
            self.extra.setdefault("submissions", []).append({"phase": phase.value, **asdict(stats)})  # type: ignore[union-attr]
        self.batches.append(
            BatchRecord(
                phase=phase,
                request_ids=tuple(ids),
                max_new_tokens=max(submission.caps),
                engine_steps=max(submission.caps),
                decode_steps=stats.steps if stats is not None and stats.steps else max(r.finish_step for r in rows),
                # No finished row or padding row is decoded: each row costs its own steps.
                row_steps=sum(row.finish_step for row in rows),
                prompt_tokens=sum(len(prompt) for prompt in prompts),
                padded_prompt_tokens=sum(len(prompt) for prompt in prompts),
                prefill_s=prefill_s,
                decode_s=wall_s - prefill_s,
            )
        )
        failed = []
        for index, budget, item in zip(ids, budgets, timed, strict=True):
            if item.row.error is not None:  # the engine refused or aborted it: an error line, not an FCR failure
                self.fail(index, item.row.error, item.row.error_code or "engine_error", offset + item.finished_s)
            elif not self.finish(index, item.row, budget, phase, offset + item.finished_s):
                failed.append(index)
        self.on_progress(len(ids) - len(failed))
        return failed

    def serve_group(self, sampling: SamplingParams, members: list[int]) -> None:
        """All members at once (in the policy's order, with its caps), then the failures with their whole budget."""
        policy = policy_for(self.cfg)
        predicted = None
        if policy.needs_predictions or self.cfg.kv_admission is KVAdmission.PREDICTED:
            assert self.predicted is not None, "check_predictions guarantees predictions for this policy"
            predicted = [self.predicted[index] for index in members]
        budgets = [self.budget(index) for index in members]
        first = with_reservations(policy.first(predicted, budgets, self.cfg), predicted, self.cfg)
        failed = self.submit(members, first, Phase.INITIAL, sampling)
        if failed:
            again = policy.recompute([self.budget(index) for index in failed])
            # The requests cut short outgrew their prediction: they reserve their whole budget (unless greedy).
            again = replace(again, reserves=None if first.reserves is None else list(again.caps), hold=first.hold)
            left = self.submit(failed, again, Phase.RECOMPUTE, sampling)
            assert not left, "recompute caps cover every budget"
