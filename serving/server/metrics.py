"""The server's counters, and /metrics in Prometheus' text format (written here: a handful of lines needs no
client library)."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TOKENS_WINDOW_S = 10.0
"""tokens/s is measured over the last this many seconds."""


@dataclass
class Gauges:
    """Values read at scrape time from the parts that own them."""

    queue_interactive: int = 0
    queue_batch: int = 0
    running: int = 0
    oldest_wait_s: float = 0.0
    preemptions: int = 0
    active_batches: int = 0


@dataclass
class ServerMetrics:
    """Counters the worker, the predictor and the routes add to (thread-safe)."""

    requests: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    """(lane, outcome) -> requests finished that way (outcome: completed, failed, cancelled)."""
    generated_tokens: int = 0
    batch_lines_computed: int = 0
    """Batch lines the engine generated in this process (a resumed job's earlier lines are not among them)."""
    predictor_calls: int = 0
    predictor_requests: int = 0
    predictor_seconds: float = 0.0
    predictor_last_s: float = 0.0
    predictor_errors: int = 0
    predictor_skipped: int = 0
    """Interactive requests not predicted: released at once into an engine with room (their rank cannot matter)."""
    queue_wait_seconds: float = 0.0
    queue_released: int = 0
    engine_steps: int = 0
    engine_step_seconds: float = 0.0
    engine_step_rows: int = 0
    """Requests inside the engine, summed over its steps (mean batch = this / engine_steps)."""
    _recent: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tokens(self, count: int, now: float | None = None) -> None:
        """Count generated tokens (for the total and the recent rate)."""
        if count <= 0:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            self.generated_tokens += count
            self._recent.append((now, count))
            self._trim(now)

    def tokens_per_s(self, now: float | None = None) -> float:
        """Generated tokens per second over the last TOKENS_WINDOW_S."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            return sum(count for _, count in self._recent) / TOKENS_WINDOW_S

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - TOKENS_WINDOW_S:
            self._recent.popleft()

    def finished(self, lane: str, outcome: str, batch_line_computed: bool = False) -> None:
        """Count a request that left the server."""
        with self._lock:
            self.requests[(lane, outcome)] += 1
            self.batch_lines_computed += batch_line_computed

    def released(self, waited_s: float) -> None:
        """Count a request the queue released after waiting waited_s."""
        with self._lock:
            self.queue_released += 1
            self.queue_wait_seconds += waited_s

    def predicted(self, requests: int, seconds: float, failed: bool = False) -> None:
        """Count one predictor call."""
        with self._lock:
            self.predictor_calls += 1
            self.predictor_requests += requests
            self.predictor_seconds += seconds
            self.predictor_last_s = seconds
            self.predictor_errors += failed

    def stepped(self, seconds: float, rows: int) -> None:
        """Count one engine step of `rows` requests that took `seconds` (how fast the engine ran: load tests tell
        a slower machine from a worse order by it)."""
        with self._lock:
            self.engine_steps += 1
            self.engine_step_seconds += seconds
            self.engine_step_rows += rows

    def skipped_prediction(self) -> None:
        """Count a request released without a prediction (the engine had room and nothing waited)."""
        with self._lock:
            self.predictor_skipped += 1

    def render(self, gauges: Gauges) -> str:
        """Prometheus text exposition format."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP seqsched_{name} {help_text}")
            lines.append(f"# TYPE seqsched_{name} {kind}")
            lines.extend(f"seqsched_{name}{labels} {_number(value)}" for labels, value in samples)

        with self._lock:
            requests = dict(self.requests)
            totals = (self.generated_tokens, self.batch_lines_computed, self.queue_released, self.queue_wait_seconds)
            predictor = (self.predictor_calls, self.predictor_requests, self.predictor_seconds, self.predictor_last_s)
            predictor_errors, predictor_skipped = self.predictor_errors, self.predictor_skipped
            steps = (self.engine_steps, self.engine_step_seconds, self.engine_step_rows)
        depth = [('{lane="interactive"}', gauges.queue_interactive), ('{lane="batch"}', gauges.queue_batch)]
        metric("queue_depth", "gauge", "Requests waiting in the server's queue.", depth)
        metric(
            "queue_oldest_wait_seconds",
            "gauge",
            "Wait of the longest-waiting queued request.",
            [("", gauges.oldest_wait_s)],
        )
        metric(
            "running_rows", "gauge", "Requests inside the engine (running or waiting there).", [("", gauges.running)]
        )
        metric(
            "tokens_per_second",
            "gauge",
            f"Generated tokens/s over the last {TOKENS_WINDOW_S:g} s.",
            [("", self.tokens_per_s())],
        )
        metric("generated_tokens_total", "counter", "Tokens generated.", [("", totals[0])])
        metric(
            "preemptions_total", "counter", "Requests the engine preempted (KV cache full).", [("", gauges.preemptions)]
        )
        samples = [
            (f'{{lane="{lane}",outcome="{outcome}"}}', count) for (lane, outcome), count in sorted(requests.items())
        ]
        metric("requests_total", "counter", "Requests that left the server, by lane and outcome.", samples)
        metric("batch_lines_computed_total", "counter", "Batch lines generated by this process.", [("", totals[1])])
        metric(
            "active_batches",
            "gauge",
            "Batch jobs validating, in progress, finalizing or cancelling.",
            [("", gauges.active_batches)],
        )
        metric("queue_wait_seconds_sum", "counter", "Seconds released requests waited in the queue.", [("", totals[3])])
        metric("queue_wait_seconds_count", "counter", "Requests released from the queue.", [("", totals[2])])
        metric(
            "predictor_calls_total",
            "counter",
            "Predictor calls (arrivals are predicted in groups).",
            [("", predictor[0])],
        )
        metric("predictor_requests_total", "counter", "Requests predicted.", [("", predictor[1])])
        metric("predictor_latency_seconds_sum", "counter", "Seconds spent in predictor calls.", [("", predictor[2])])
        metric("predictor_latency_seconds_last", "gauge", "The latest predictor call's seconds.", [("", predictor[3])])
        metric(
            "predictor_errors_total",
            "counter",
            "Predictor calls that failed (requests ranked longest).",
            [("", predictor_errors)],
        )
        metric(
            "predictor_skipped_total",
            "counter",
            "Requests not predicted: released at once into an engine with room, where a rank cannot matter.",
            [("", predictor_skipped)],
        )
        metric("engine_steps_total", "counter", "Engine steps taken.", [("", steps[0])])
        metric("engine_step_seconds_sum", "counter", "Seconds spent in engine steps.", [("", steps[1])])
        rows_help = "Requests inside the engine, summed over its steps."
        metric("engine_step_rows_sum", "counter", rows_help, [("", steps[2])])
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def preemption_counter(engine: object) -> Callable[[], int]:
    """A function giving the engine's preemptions so far: vLLM's scheduler counted through a wrapper around its
    preemption method (it keeps no total of its own), or the fake backend's list in tests; 0 when neither is found."""
    llm_engine = getattr(getattr(engine, "llm", None), "llm_engine", None)
    recorded = getattr(llm_engine, "preempted", None)
    if isinstance(recorded, list):
        return lambda: len(recorded)
    scheduler = getattr(getattr(getattr(llm_engine, "engine_core", None), "engine_core", None), "scheduler", None)
    preempt = getattr(scheduler, "_preempt_request", None)
    if preempt is None:
        return lambda: 0
    count = [0]

    def counting(*args: object, **kwargs: object) -> object:
        count[0] += 1
        return preempt(*args, **kwargs)

    scheduler._preempt_request = counting  # type: ignore[union-attr]
    return lambda: count[0]
