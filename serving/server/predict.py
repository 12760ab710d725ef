"""The length predictor behind one thread: requests that arrive while it is busy are predicted together in its
next call (a model predicts a group faster than one by one), interactive arrivals before batch lines, and no two
calls run at once (a torch model is not made for concurrent callers). Each call may run on the engine thread
between two steps (`run_on`): on a CPU whose cores the engine's threads occupy, taking turns beats two thread
pools fighting over them. Every call's latency goes to /metrics."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from seqsched.requests import Request
from serving.server.metrics import ServerMetrics
from serving.server.queue import Lane

log = logging.getLogger(__name__)

Outcome = tuple[list[int | None], float, Exception | None]


class PredictionService:
    """Predicted lengths for requests, from a RequestPredictor (serving.predictors) on a thread of its own."""

    def __init__(
        self,
        predictor: Any,
        metrics: ServerMetrics,
        most_per_call: int = 64,
        run_on: Callable[[Callable[[], Outcome]], Outcome] | None = None,
    ) -> None:
        """run_on: runs each predictor call somewhere else and returns its result (the engine thread's
        EngineWorker.call); None: on this service's thread."""
        self.predictor = predictor
        self.metrics = metrics
        self.most_per_call = most_per_call
        self.run_on = run_on
        self._condition = threading.Condition()
        self._pending: dict[Lane, collections.deque[tuple[list[Request], Future[list[int | None]]]]] = {
            lane: collections.deque() for lane in Lane
        }
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="seqsched-predictor", daemon=True)
        self._thread.start()

    def submit(self, requests: Sequence[Request], lane: Lane = Lane.INTERACTIVE) -> Future[list[int | None]]:
        """One predicted length per request (None where the predictor failed for it: the queue ranks it longest).
        Batch lines should come in groups of at most most_per_call (a job predicts its lines group by group)."""
        future: Future[list[int | None]] = Future()
        if not requests:
            future.set_result([])
            return future
        with self._condition:
            self._pending[lane].append((list(requests), future))
            self._condition.notify()
        return future

    def predict(self, requests: Sequence[Request], lane: Lane = Lane.BATCH) -> list[int | None]:
        """submit() and wait (for threads that may block)."""
        return self.submit(requests, lane).result()

    def stop(self) -> None:
        """Stop the thread after the call in progress; what waits gets no prediction (None)."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        self._thread.join(timeout=30)

    def _next_group(self) -> list[tuple[list[Request], Future[list[int | None]]]] | None:
        """Interactive arrivals first, as many as fit one call; else batch groups (None: stopping)."""
        with self._condition:
            while not self._stopping and not any(self._pending.values()):
                self._condition.wait()
            if self._stopping:
                for entries in self._pending.values():
                    for waiting, future in entries:
                        future.set_result([None] * len(waiting))
                    entries.clear()
                return None
            entries = self._pending[Lane.INTERACTIVE] or self._pending[Lane.BATCH]
            group = [entries.popleft()]
            size = len(group[0][0])
            while entries and size + len(entries[0][0]) <= self.most_per_call:
                group.append(entries.popleft())
                size += len(group[-1][0])
            return group

    def _loop(self) -> None:
        while (group := self._next_group()) is not None:
            requests = [request for batch, _ in group for request in batch]
            lengths = self._predict(requests)
            start = 0
            for batch, future in group:
                future.set_result(lengths[start : start + len(batch)])
                start += len(batch)

    def _predict(self, requests: list[Request]) -> list[int | None]:
        lengths, seconds, error = self._call(requests)
        self.metrics.predicted(len(requests), seconds, failed=error is not None)
        if error is None:
            return lengths
        # One bad request (an oracle without its id) must not fail its whole group: alone, it gets None.
        if len(requests) == 1:
            log.warning("predictor failed for request %s: %s", requests[0].id, error)
            return [None]
        return [value for request in requests for value in self._predict([request])]

    def _call(self, requests: list[Request]) -> Outcome:
        """One predictor call where run_on says, timed where it runs."""

        def timed() -> Outcome:
            started = time.perf_counter()
            try:
                return list(self.predictor.predict_requests(requests)), time.perf_counter() - started, None
            except Exception as error:
                return [], time.perf_counter() - started, error

        if self.run_on is None:
            return timed()
        try:
            return self.run_on(timed)
        except RuntimeError as error:  # the engine thread stopped
            return [], 0.0, error
