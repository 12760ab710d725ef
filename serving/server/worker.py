"""The engine thread: the one thread that touches the engine (vLLM's LLMEngine is not thread-safe).

It releases queued requests into the engine while fewer than `max_running` are inside it (so the server's queue,
not the engine's, decides the order: serving.server.queue), steps the engine, and hands each StepEvent to the
request's sink (an HTTP handler's asyncio queue, or a batch job's line writer). With nothing to do it sleeps on a
condition; submit() and cancel() wake it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from seqsched.engines.api import GREEDY, RowOutput, SamplingParams
from serving.server.metrics import Gauges, ServerMetrics, preemption_counter
from serving.server.queue import Lane, QueueConfig, RequestQueue

log = logging.getLogger(__name__)

T = TypeVar("T")

CANCELLED = "cancelled"
"""Error code a sink gets for a request cancelled before it finished."""


class Sink(Protocol):
    """Where a request's results go; called on the engine thread, so implementations hand off and return."""

    def tokens(self, token_ids: list[int]) -> None:
        """New tokens of a streamed request."""

    def done(self, row: RowOutput) -> None:
        """The request finished (row.error set: the engine refused or ended it)."""

    def failed(self, message: str, code: str, status: int) -> None:
        """The request will not finish: refused at add (400), cancelled, or the engine failed (500)."""


@dataclass
class Work:
    """A request for the engine."""

    lane: Lane
    prompt_ids: list[int]
    max_tokens: int
    sink: Sink
    sampling: SamplingParams = GREEDY
    seed: int | None = None
    predicted: int | None = None
    """Its predicted length (the queue's sjf rank)."""
    stream: bool = False
    owner: str | None = None
    """The batch job a line belongs to (cancel_owner cancels all of them)."""
    arrival_s: float = 0.0
    request_id: str | None = field(default=None, repr=False)
    """The engine's id once released."""


class EngineWorker:
    """Owns the engine on its own thread; other threads submit and cancel work."""

    def __init__(
        self,
        engine: Any,
        queue_config: QueueConfig,
        metrics: ServerMetrics | None = None,
        max_running: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.queue = RequestQueue(queue_config)
        self.metrics = metrics or ServerMetrics()
        self.max_running = max_running or getattr(engine, "max_num_seqs", None) or 1
        self.clock = clock
        self.preemptions = preemption_counter(engine)
        self._condition = threading.Condition()
        self._waiting: dict[int, Work] = {}
        self._running: dict[int, Work] = {}
        self._cancels: set[int] = set()
        self._calls: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._keys = itertools.count()
        self._released = itertools.count()
        self._stopping = False
        self._alive = False
        self._thread: threading.Thread | None = None

    # Other threads.

    def start(self) -> None:
        """Run the engine loop on a thread of its own."""
        self._thread = threading.Thread(target=self.run, name="seqsched-engine", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Run the engine loop on the calling thread until stop() (`seqsched server` runs it on the main thread,
        where vLLM was started and bound its CPU threads)."""
        self._alive = True
        try:
            self._loop()
        finally:
            with self._condition:
                self._stopping = True  # also when the loop ended by an interrupt: later submits and calls fail fast
            self._alive = False
            self._abandon()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop after its current step; what is queued or running is dropped (batch lines resume at the
        next start, open HTTP requests end)."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, work: Work) -> int:
        """Queue a request; returns its key (for cancel)."""
        with self._condition:
            if self._stopping:
                raise RuntimeError("the engine thread is stopping")
            key = next(self._keys)
            work.arrival_s = self.clock()
            self._waiting[key] = work
            self.queue.push(key, work.lane, work.arrival_s, work.max_tokens, work.predicted)
            self._condition.notify_all()
        return key

    def has_room(self) -> bool:
        """True when a request submitted now would be released into the engine at once: nothing waits and fewer
        than max_running run (then its rank in the queue cannot matter)."""
        with self._condition:
            return not self._waiting and len(self._running) < self.max_running

    def call(self, function: Callable[[], T]) -> T:
        """Run a function on the engine thread between two steps and return its result (the predictor, on a CPU
        whose cores the engine's threads occupy: taking turns beats two thread pools fighting over them)."""
        future: Future[T] = Future()
        with self._condition:
            if self._stopping:
                raise RuntimeError("the engine thread is stopping")
            self._calls.append((function, future))
            self._condition.notify_all()
        return future.result()

    def cancel(self, key: int) -> None:
        """Cancel a queued or running request; its sink gets failed(code=cancelled) unless it finished first."""
        with self._condition:
            self._cancels.add(key)
            self._condition.notify_all()

    def cancel_owner(self, owner: str) -> int:
        """Cancel every queued or running line of a batch job; returns how many."""
        with self._condition:
            keys = [key for key, work in (*self._waiting.items(), *self._running.items()) if work.owner == owner]
            self._cancels.update(keys)
            self._condition.notify_all()
        return len(keys)

    def gauges(self) -> Gauges:
        """Queue depths, rows inside the engine and preemptions, for /metrics."""
        with self._condition:
            return Gauges(
                queue_interactive=self.queue.depth(Lane.INTERACTIVE),
                queue_batch=self.queue.depth(Lane.BATCH),
                running=len(self._running),
                oldest_wait_s=self.queue.oldest_wait_s(self.clock()),
                preemptions=self.preemptions(),
            )

    @property
    def stopping(self) -> bool:
        """True once stop() was called or the loop ended."""
        return self._stopping

    @property
    def alive(self) -> bool:
        """True while the engine loop runs."""
        return self._alive

    # The engine thread.

    def _loop(self) -> None:
        while True:
            with self._condition:
                while not self._stopping and not self._has_work():
                    self._condition.wait()
                if self._stopping:
                    break
                cancels, self._cancels = self._cancels, set()
                calls, self._calls = self._calls, []
            self._run_calls(calls)
            self._cancel(cancels)
            with self._condition:
                released = self._release()
            for key, work in released:
                self._add(key, work)
            if self.engine.has_unfinished():
                self._step()

    def _has_work(self) -> bool:
        free = len(self._running) < self.max_running
        waiting = free and len(self.queue) > 0
        return bool(self._cancels) or bool(self._calls) or self.engine.has_unfinished() or waiting

    @staticmethod
    def _run_calls(calls: list[tuple[Callable[[], Any], Future[Any]]]) -> None:
        for function, future in calls:
            try:
                future.set_result(function())
            except Exception as error:  # the caller gets it; the engine goes on
                future.set_exception(error)

    def _release(self) -> list[tuple[int, Work]]:
        """Pop queued requests for the free slots (under the lock)."""
        released = []
        now = self.clock()
        while len(self._running) + len(released) < self.max_running:
            ticket = self.queue.pop(now)
            if ticket is None:
                break
            work = self._waiting.pop(ticket.key)
            self.metrics.released(now - work.arrival_s)
            released.append((ticket.key, work))
        with_keys = dict(released)
        self._running.update(with_keys)
        return released

    def _add(self, key: int, work: Work) -> None:
        try:
            work.request_id = self.engine.add(
                key,
                work.prompt_ids,
                work.max_tokens,
                work.sampling,
                work.seed,
                priority=next(self._released),  # vLLM keeps our release order among what it holds
                stream=work.stream,
            )
        except ValueError as error:
            self._forget(key)
            message = f"The engine refused the request: {error}"
            self._notify(work, lambda: work.sink.failed(message, "invalid_request", 400))

    def _cancel(self, keys: set[int]) -> None:
        for key in keys:
            with self._condition:
                work = self._waiting.pop(key, None)
                if work is not None:
                    self.queue.remove(key)
            if work is None:
                work = self._running.get(key)
                if work is None:
                    continue  # finished already
                if work.request_id is not None:
                    self.engine.abort([work.request_id])
                self._forget(key)
            self._notify(work, lambda work=work: work.sink.failed("The request was cancelled.", CANCELLED, 499))

    def _step(self) -> None:
        started = time.perf_counter()
        try:
            events = self.engine.step()
            self.metrics.stepped(time.perf_counter() - started, len(self._running))
        except Exception as error:  # one failed step must not take the server down: fail what was running
            log.exception("engine step failed")
            message = f"The engine failed: {error}"
            self.engine.abort()
            for key in list(self._running):
                work = self._forget(key)
                self._notify(work, lambda work=work: work.sink.failed(message, "engine_error", 500))
            return
        for event in events:
            work = self._running.get(event.key)
            if work is None:
                continue
            if event.row is None:
                self._notify(work, lambda work=work, event=event: work.sink.tokens(event.token_ids))
                continue
            self._forget(event.key)
            self.metrics.tokens(event.row.num_tokens)
            if work.stream and event.token_ids:
                self._notify(work, lambda work=work, event=event: work.sink.tokens(event.token_ids))
            self._notify(work, lambda work=work, event=event: work.sink.done(event.row))

    def _forget(self, key: int) -> Work:
        with self._condition:
            return self._running.pop(key)

    def _notify(self, work: Work, call: Callable[[], None]) -> None:
        """Call into a sink; a sink's failure is logged and never stops the thread."""
        try:
            call()
        except Exception:
            log.exception("a %s request's sink failed", work.lane.value)

    def _abandon(self) -> None:
        """At stop: abort what the engine holds and tell open requests."""
        try:
            self.engine.abort()
        except Exception:  # the engine may be the reason we stop
            log.exception("abort at stop failed")
        with self._condition:
            works = [*self._waiting.values(), *self._running.values()]
            self._waiting.clear()
            self._running.clear()
            calls, self._calls = self._calls, []
        for _, future in calls:
            future.set_exception(RuntimeError("the engine thread stopped"))
        for work in works:
            self._notify(work, lambda work=work: work.sink.failed("The server is shutting down.", "shutdown", 503))
