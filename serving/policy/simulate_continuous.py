"""What a continuous-batching run costs, without a model (pure, no torch): true lengths + an admission policy + a
pool size + a step-cost model -> each request's completion time, samples/s, mean latency.

The simulated engine is seqsched.engines.hf_continuous: waiting requests take free slots in priority order (ties
in arrival order) through one batched prefill of the newcomers (its logits give each newcomer's first token);
then every decode step advances each running row by one token and costs StepCost.step_s(rows, width), the width
being the longest running context (left-padding alignment with compaction). A row is done when it emits its stop
token (one step after its last token) or reaches its cap; like the engine's, it stays in the batch as a retired row
(computed, ignored) until the pool compacts: at the next admission, once admit_min rows have retired, or once they
outnumber a quarter of the live ones. With FCR caps the rows cut short run again afterwards.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from seqsched.engines.pool_rules import admits, compacts, default_admit_min
from seqsched.stats import nearest_rank
from serving.policy.admission import AdmissionPolicy, Pass
from serving.policy.scheduler import ScheduleConfig
from serving.policy.simulate import StepCost


@dataclass
class ContinuousSim:
    """A simulated continuous run."""

    completion_s: list[float]
    """Per request: seconds from the start until its output was complete."""
    time_s: float
    steps: int = 0
    row_steps: int = 0
    """Rows computed per decode step, summed: retired rows included (as SubmitStats.row_steps)."""
    prefills: int = 0
    failed: list[int] = field(default_factory=list)
    retired_row_steps: int = 0
    """The part of row_steps spent on rows already done, waiting for the pool to compact."""
    prefill_s: float = 0.0
    decode_s: float = 0.0

    def summary(self) -> dict[str, float | int]:
        """The figures a report shows."""
        count = len(self.completion_s)
        ordered = sorted(self.completion_s)
        return {
            "requests": count,
            "time_s": self.time_s,
            "samples_per_s": count / self.time_s if self.time_s else 0.0,
            "latency_mean_s": sum(ordered) / count if count else 0.0,
            "latency_p50_s": ordered[(count - 1) // 2] if count else 0.0,
            "latency_p99_s": nearest_rank(ordered, 99),
            "preemptions": 0,
            "time_to_half_s": ordered[max(1, -(-count // 2)) - 1] if count else 0.0,
            "steps": self.steps,
            "row_steps": self.row_steps,
            "retired_row_steps": self.retired_row_steps,
            "prefill_s": self.prefill_s,
            "decode_s": self.decode_s,
            "failed": len(self.failed),
        }


def simulate_pass(
    lengths: Sequence[int],
    submission: Pass,
    slots: int,
    cost: StepCost,
    prompt_tokens: int = 64,
    start_s: float = 0.0,
    admit_min: int = 1,
) -> tuple[ContinuousSim, list[int]]:
    """One submission: completion times (from start_s) and the requests whose cap cut them short (their true
    length reaches the cap: they emitted cap tokens without their stop token). Waiting requests are admitted once
    admit_min slots are free (or fewer are waiting, or none runs); done rows are computed until the pool compacts
    (see the module docstring)."""
    count = len(lengths)
    priorities = submission.priorities or [0] * count
    waiting = [(priorities[index], index) for index in range(count)]
    heapq.heapify(waiting)
    # Per running row: the step at which it leaves and its context when admitted.
    running: list[tuple[int, int]] = []  # (finish step, request)
    admitted_at: dict[int, int] = {}
    completion = [0.0] * count
    cut: list[int] = []
    now, step, steps, row_steps, prefills = start_s, 0, 0, 0, 0
    retired, retired_row_steps = 0, 0  # done rows still in the batch, and the row-steps spent on them
    prefill_s = 0.0

    def finish_step(index: int) -> int:
        """Tokens sampled until the row leaves: its length plus the stop token, or its cap."""
        return lengths[index] + 1 if lengths[index] < submission.caps[index] else submission.caps[index]

    while waiting or running:
        newcomers: list[int] = []
        ready = admits(len(running), slots, len(waiting), admit_min)
        while ready and waiting and len(running) + len(newcomers) < slots:
            newcomers.append(heapq.heappop(waiting)[1])
        if newcomers:
            retired = 0  # the engine compacts before newcomers join
            prefill = cost.prefill_s(len(newcomers), prompt_tokens)
            now += prefill
            prefill_s += prefill
            prefills += 1
            for index in newcomers:
                admitted_at[index] = step
                if finish_step(index) <= 1:  # done with the prefill's token
                    completion[index] = now
                    if lengths[index] >= submission.caps[index]:
                        cut.append(index)
                else:
                    heapq.heappush(running, (step + finish_step(index) - 1, index))
            if len(running) < slots and waiting:
                continue
        if not running:
            continue
        # Every running row decodes; the cache width follows the oldest admitted running row (after compaction).
        width = prompt_tokens + max(step - admitted_at[index] for _, index in running) + 1
        now += cost.step_s(len(running) + retired, width)
        step += 1
        steps += 1
        row_steps += len(running) + retired
        retired_row_steps += retired
        while running and running[0][0] <= step:
            _, index = heapq.heappop(running)
            completion[index] = now
            retired += 1
            if lengths[index] >= submission.caps[index]:
                cut.append(index)
        if compacts(len(running), retired, admit_min):
            retired = 0
    sim = ContinuousSim(
        completion,
        now - start_s,
        steps,
        row_steps,
        prefills,
        retired_row_steps=retired_row_steps,
        prefill_s=prefill_s,
        decode_s=now - start_s - prefill_s,
    )
    return sim, cut


def simulate_continuous(
    true_lengths: Sequence[int],
    predicted: Sequence[int] | None,
    policy: AdmissionPolicy,
    cfg: ScheduleConfig,
    slots: int,
    cost: StepCost | None = None,
    prompt_tokens: int = 64,
    admit_min: int | None = None,
) -> ContinuousSim:
    """The policy's first pass over every request, then its recompute pass over those cut short (from scratch).
    admit_min: newcomers wait until this many slots are free (default: the engine's, slots // 8)."""
    admit_min = default_admit_min(slots) if admit_min is None else admit_min
    cost = cost or StepCost()
    budgets = [cfg.limit] * len(true_lengths)
    lengths = [min(length, cfg.limit) for length in true_lengths]
    submission = policy.first(predicted, budgets, cfg)
    first, cut = simulate_pass(lengths, submission, slots, cost, prompt_tokens, admit_min=admit_min)
    failed = [index for index in cut if submission.caps[index] < cfg.limit]
    if not failed:
        return first
    again = policy.recompute([cfg.limit] * len(failed))
    second, _ = simulate_pass(
        [lengths[index] for index in failed], again, slots, cost, prompt_tokens, first.time_s, admit_min
    )
    completion = list(first.completion_s)
    for position, index in enumerate(failed):
        completion[index] = second.completion_s[position]
    return ContinuousSim(
        completion,
        first.time_s + second.time_s,
        first.steps + second.steps,
        first.row_steps + second.row_steps,
        first.prefills + second.prefills,
        failed,
        first.retired_row_steps + second.retired_row_steps,
        first.prefill_s + second.prefill_s,
        first.decode_s + second.decode_s,
    )


__all__ = ["ContinuousSim", "simulate_continuous", "simulate_pass"]
