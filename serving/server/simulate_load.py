"""What a standing queue costs each order, without a model or a server (pure: no torch, no clock): requests with
known true lengths arrive at given times, wait in the server's own queue (serving.server.queue: its policy rank, its
aging), and run `places` at a time, as `seqsched server` feeds vLLM (`--engine.vllm.max_num_seqs`); each step
decodes one token for every running request and costs `step_s(running)`; newcomers join through one prefill that
costs `prefill_s(newcomers)` and gives each its first token. Out: each request's latency and time to first token.

It answers what a live load test cannot cheaply: how far shortest-predicted-first can cut mean latency on a
workload at a given load, with a predictor's real predictions or with the true lengths (the bound), over many
arrival draws (benchmarks/server/queue_bound.py).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from seqsched.stats import nearest_rank
from serving.server.queue import Lane, QueueConfig, RequestQueue


@dataclass(frozen=True)
class LoadSim:
    """One simulated run: per request (in input order) its latency and time to first token, from its arrival."""

    latency_s: list[float]
    ttft_s: list[float]
    time_s: float
    """From the first arrival to the last completion."""

    def summary(self) -> dict[str, float]:
        """Mean, median and 99th percentile latency, mean time to first token, requests per second."""
        count = len(self.latency_s)
        return {
            "latency_mean_s": sum(self.latency_s) / count if count else 0.0,
            "latency_p50_s": nearest_rank(self.latency_s, 50),
            "latency_p99_s": nearest_rank(self.latency_s, 99),
            "ttft_mean_s": sum(self.ttft_s) / count if count else 0.0,
            "throughput_rps": count / self.time_s if self.time_s else 0.0,
        }


def poisson_arrivals(count: int, rate_rps: float, seed: int) -> list[float]:
    """Arrival times of `count` requests at `rate_rps` on average (exponential gaps), the first at 0."""
    if rate_rps <= 0:
        raise ValueError(f"rate_rps must be > 0, got {rate_rps}")
    rng = random.Random(seed)
    times, now = [], 0.0
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(rate_rps)
    return times


def simulate_load(
    arrivals: Sequence[float],
    lengths: Sequence[int],
    predicted: Sequence[int] | None,
    places: int,
    step_s: Callable[[int], float],
    queue: QueueConfig,
    prefill_s: Callable[[int], float] | None = None,
) -> LoadSim:
    """Serve requests arriving at `arrivals` (non-decreasing) with true `lengths` (generated tokens, at most the
    queue's limit, which caps every request): the queue releases one whenever a place is free (see the module
    docstring). predicted: the lengths the queue ranks by (None: none given; an sjf queue then ranks every
    request as the longest). A request of length L takes its prefill's token and L more decode steps (the stop
    token's), or limit - 1 more when it reaches the limit."""
    count = len(lengths)
    if len(arrivals) != count or (predicted is not None and len(predicted) != count):
        raise ValueError("arrivals, lengths and predicted need one entry per request")
    if places < 1:
        raise ValueError(f"places must be >= 1, got {places}")
    if any(later < earlier for earlier, later in itertools.pairwise(arrivals)):
        raise ValueError("arrivals must not decrease")
    limit = queue.schedule.limit
    prefill = prefill_s or step_s
    waiting = RequestQueue(queue)
    latency, ttft = [0.0] * count, [0.0] * count
    running: dict[int, int] = {}  # request -> decode steps left
    now, arrived, done = 0.0, 0, 0
    while done < count:
        while arrived < count and arrivals[arrived] <= now:
            guess = None if predicted is None else int(predicted[arrived])
            waiting.push(arrived, Lane.INTERACTIVE, arrivals[arrived], limit, guess)
            arrived += 1
        newcomers = []
        while len(running) + len(newcomers) < places and len(waiting):
            ticket = waiting.pop(now)
            assert ticket is not None
            newcomers.append(ticket.key)
        if newcomers:
            now += prefill(len(newcomers))
            for index in newcomers:
                ttft[index] = now - arrivals[index]
                length = min(int(lengths[index]), limit)
                steps = length if length < limit else limit - 1
                if steps <= 0:
                    latency[index] = now - arrivals[index]
                    done += 1
                else:
                    running[index] = steps
        if not running:
            if arrived < count and not len(waiting):
                now = max(now, arrivals[arrived])
            continue
        now += step_s(len(running))
        for index in list(running):
            running[index] -= 1
            if running[index] == 0:
                del running[index]
                latency[index] = now - arrivals[index]
                done += 1
    return LoadSim(latency, ttft, now - (arrivals[0] if count else 0.0))


__all__ = ["LoadSim", "poisson_arrivals", "simulate_load"]
