"""Scheduler classes for vLLM's engine core (`--engine.vllm.scheduler_cls`): vLLM's own v1 scheduler with counters,
and a length-aware one that admits by each request's reserved KV.

vLLM admits a waiting request as soon as its prompt fits the free KV blocks ("greedy"); when running sequences then
outgrow the cache it preempts one (the lowest priority, or the newest) and recomputes it later. With predicted lengths
a scheduler can instead admit a request only when the running requests and it, each growing to its expected length
and then leaving, never need more blocks at once than the cache has. The reservation comes with each request
(SamplingParams.extra_args[RESERVE_KEY], tokens to generate), set by the caller from the policy
(serving.policy.admission.reservations): the predicted length plus a margin and the stop token, or max_tokens held
whole to the end (reserve-max, HOLD_KEY). A request that outgrows its reservation keeps running while the cache
allows; past that, vLLM's own preemption applies. Requests without a reservation are admitted as vLLM would.

The rule is the one our pool applies (seqsched.engines.pool_rules.reservations_fit), counted in whole KV blocks,
around vLLM's schedule(): only the waiting requests that may start are shown to it that step, so vLLM's own scheduling
(chunked prefill, token budget, priorities, preemption) is untouched otherwise. Nothing is admitted ahead of a
request held back: the order the caller chose holds.
"""

from __future__ import annotations

import math
from typing import Any

from vllm.v1.core.sched.request_queue import create_request_queue
from vllm.v1.core.sched.scheduler import Scheduler

from seqsched.engines.config import COUNTING_SCHEDULER, RESERVING_SCHEDULER
from seqsched.engines.pool_rules import reservations_fit

RESERVE_KEY = "seqsched_reserve_tokens"
"""SamplingParams.extra_args key: the generated tokens the length-aware scheduler reserves KV for."""
HOLD_KEY = "seqsched_hold_reservation"
"""SamplingParams.extra_args key: true when the reservation is held whole to the end (reserve-max)."""
COUNTING = COUNTING_SCHEDULER
LENGTH_AWARE = RESERVING_SCHEDULER


class CountingScheduler(Scheduler):
    """vLLM's own scheduler, unchanged, counting preemptions and the computed tokens they throw away."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seqsched_preemptions = 0
        self.seqsched_recomputed_tokens = 0
        self.seqsched_max_running = 0
        self.seqsched_running_steps = 0
        """Sum over steps of the sequences scheduled (mean batch = this / steps)."""
        self.seqsched_steps = 0

    def _preempt_request(self, request: Any, timestamp: float, *args: Any, **kwargs: Any) -> None:
        self.seqsched_preemptions += 1
        self.seqsched_recomputed_tokens += int(request.num_computed_tokens)
        super()._preempt_request(request, timestamp, *args, **kwargs)

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        output = super().schedule(*args, **kwargs)
        scheduled = len(output.num_scheduled_tokens)
        if scheduled:
            self.seqsched_steps += 1
            self.seqsched_running_steps += scheduled
            self.seqsched_max_running = max(self.seqsched_max_running, scheduled)
        return output

    def seqsched_reset_peak(self) -> None:
        """Start counting the most sequences at once afresh (the engine does at each submission)."""
        self.seqsched_max_running = 0

    def seqsched_counters(self) -> dict[str, int]:
        """The counters, for SubmitStats."""
        return {
            "preemptions": self.seqsched_preemptions,
            "recomputed_tokens": self.seqsched_recomputed_tokens,
            "max_rows": self.seqsched_max_running,
            "scheduled_steps": self.seqsched_steps,
            "scheduled_rows": self.seqsched_running_steps,
        }


def reservation(request: Any) -> tuple[int | None, bool]:
    """The generated tokens a request asked to have KV reserved for (None: it carries no reservation), and whether
    it holds the reservation whole to the end (reserve-max)."""
    extra = getattr(request.sampling_params, "extra_args", None) or {}
    reserve = extra.get(RESERVE_KEY)
    return (None if reserve is None else int(reserve)), bool(extra.get(HOLD_KEY, False))


class LengthAwareScheduler(CountingScheduler):
    """Admits a waiting request with a reservation only when it fits by seqsched's rule (the running requests and
    it, each growing to its reservation and then leaving, never need more blocks at once than the cache has; held
    reservations count whole), in the waiting queue's order (priority, then arrival); never skips ahead (a request
    that does not fit blocks those behind it, so the order the caller chose holds).

    Each step it walks the waiting queue from its head only as far as it may admit, moves that prefix into a queue of
    its own for vLLM's schedule() and merges what is left of it (and any request preempted meanwhile) back after."""

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        admissible = self._admissible()
        if admissible is None:
            return super().schedule(*args, **kwargs)
        waiting, self.waiting = self.waiting, admissible
        try:
            return super().schedule(*args, **kwargs)
        finally:
            for request in self.waiting:  # not admitted after all, or preempted during the step
                waiting.add_request(request)
            self.waiting = waiting

    def _blocks(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    def _usable_blocks(self) -> int:
        """Blocks requests can hold: the pool's, less the null block vLLM keeps out of it."""
        pool = getattr(self.kv_cache_manager, "block_pool", None)
        total = int(getattr(pool, "num_gpu_blocks", self.cache_config.num_gpu_blocks))
        return total - 1

    def _admissible(self) -> Any | None:
        """The head of the waiting queue this step may admit, as a queue of its own (popped from the waiting queue);
        None when every waiting request may go (nothing to hold back)."""
        if not self.waiting:
            return None
        capacity = self._usable_blocks()
        held_blocks = 0
        expected: list[tuple[int, int]] = []
        for request in self.running:
            reserve, hold = reservation(request)
            context, prompt = int(request.num_tokens), int(request.num_prompt_tokens)
            if reserve is None:
                expected.append((context, 1))  # it holds its context; nothing is known of what comes
            elif hold:
                held_blocks += self._blocks(max(context + 1, prompt + reserve))
            else:
                expected.append((context, max(1, prompt + reserve - context)))
        slots = self.max_num_running_reqs - len(self.running)
        running = len(self.running)
        admissible: list[Any] = []
        for request in self.waiting:  # in priority order; stops at the first that may not go
            if slots <= 0:
                break
            reserve, hold = reservation(request)
            if reserve is not None:
                # A preempted request comes back with its generated tokens: its whole context counts.
                context, prompt = int(request.num_tokens), int(request.num_prompt_tokens)
                if hold:
                    blocks = self._blocks(max(context + 1, prompt + reserve))
                    fits = reservations_fit(expected, capacity, self.block_size, held_blocks + blocks)
                else:
                    candidate = (context, max(1, prompt + reserve - context))
                    fits = reservations_fit([*expected, candidate], capacity, self.block_size, held_blocks)
                if not fits and running:
                    break
                if hold:
                    held_blocks += blocks
                else:
                    expected.append(candidate)
            else:
                expected.append((int(request.num_tokens), 1))
            admissible.append(request)
            slots -= 1
            running += 1
        if len(admissible) == len(self.waiting):
            return None
        queue = create_request_queue(self.policy)
        self.waiting.remove_requests(admissible)
        for request in admissible:
            queue.add_request(request)
        return queue
