"""The engine thread over the fake vLLM: our queue decides the release order (sjf by prediction), aging releases a
long request on time under a stream of short ones (a manual clock: one tick per engine step), cancel and engine
refusals reach the sink, and the predictor thread predicts arrivals together and survives a failing request."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from seqsched.engines.api import RowOutput
from seqsched.engines.hf import HFEngine
from seqsched.requests import Request
from serving.policy.scheduler import Admission, ScheduleConfig
from serving.server.metrics import ServerMetrics
from serving.server.predict import PredictionService
from serving.server.queue import Lane, QueueConfig
from serving.server.worker import CANCELLED, EngineWorker, Work
from tests.test_server_app import fake_engine
from tests.tiny_model import synthetic_prompts


class Recorder:
    """A sink that remembers what happened to each request, in order."""

    def __init__(self, name: str, log: list[tuple[str, str]], done: threading.Event | None = None) -> None:
        self.name, self.log, self.event = name, log, done or threading.Event()
        self.row: RowOutput | None = None
        self.failure: tuple[str, str, int] | None = None

    def tokens(self, token_ids: list[int]) -> None:
        pass

    def done(self, row: RowOutput) -> None:
        self.row = row
        self.log.append(("done", self.name))
        self.event.set()

    def failed(self, message: str, code: str, status: int) -> None:
        self.failure = (message, code, status)
        self.log.append((code, self.name))
        self.event.set()


class Clock:
    """Time that moves one unit per engine step."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def worker_over(
    tiny_engine: HFEngine, policy: Admission, max_wait_s: float = 1e9, clock: Clock | None = None, delay_s: float = 0
) -> tuple[EngineWorker, list[str]]:
    """A worker with one slot; returns it and the list of released keys' sink names (in release order)."""
    engine = fake_engine(tiny_engine, max_num_seqs=1, max_model_len=256, delay_s=delay_s)
    released: list[str] = []
    add, step = engine.add, engine.step

    def recording_add(key, prompt_ids, max_tokens, *args, **kwargs):  # type: ignore[no-untyped-def]
        released.append(names[key])
        return add(key, prompt_ids, max_tokens, *args, **kwargs)

    def ticking_step():  # type: ignore[no-untyped-def]
        if clock is not None:
            clock.now += 1.0
        return step()

    engine.add, engine.step = recording_add, ticking_step  # type: ignore[method-assign]
    config = QueueConfig(ScheduleConfig(limit=64, policy=policy), max_wait_s=max_wait_s)
    worker = EngineWorker(engine, config, ServerMetrics(), clock=clock or Clock())
    names: dict[int, str] = {}
    worker.names = names  # type: ignore[attr-defined]
    return worker, released


def submit(worker: EngineWorker, ids: list[int], name: str, predicted: int | None, max_tokens: int, log, event=None):  # type: ignore[no-untyped-def]
    sink = Recorder(name, log, event)
    key = worker.submit(Work(Lane.INTERACTIVE, ids, max_tokens, sink, predicted=predicted))
    worker.names[key] = name  # type: ignore[attr-defined]
    return key, sink


def test_sjf_releases_the_queue_shortest_predicted_first(tiny_engine: HFEngine) -> None:
    worker, released = worker_over(tiny_engine, Admission.SJF, delay_s=0.01)
    ids = [tiny_engine.encode(prompt) for prompt in synthetic_prompts(4, seed=1)]
    log: list[tuple[str, str]] = []
    last = threading.Event()
    # Queued before the thread starts: all four wait, and the queue alone decides.
    for name, prompt, predicted in (("a", ids[0], 60), ("b", ids[1], 40), ("c", ids[2], 5), ("d", ids[3], 20)):
        submit(worker, prompt, name, predicted, 8, log, last if name == "a" else None)
    worker.start()
    assert last.wait(30)
    worker.stop()
    assert released == ["c", "d", "b", "a"]
    assert [name for kind, name in log] == released and all(kind == "done" for kind, _ in log)


def test_has_room_only_while_nothing_waits_and_a_place_is_free(tiny_engine: HFEngine) -> None:
    """A request that would be released at once needs no rank (the server skips its prediction): room means an
    empty queue and fewer running than max_running."""
    worker, _ = worker_over(tiny_engine, Admission.SJF, delay_s=0.02)
    ids = tiny_engine.encode("repeat lamp 20 times")
    log: list[tuple[str, str]] = []
    assert worker.has_room()
    done = threading.Event()
    submit(worker, ids, "first", None, 30, log, done)
    assert not worker.has_room(), "it waits in the queue (the thread has not started)"
    worker.start()
    deadline = time.monotonic() + 30
    while not worker._running and not done.is_set() and time.monotonic() < deadline:
        time.sleep(0.001)
    if not done.is_set():
        assert not worker.has_room(), "the one place is taken"
    assert done.wait(30)
    deadline = time.monotonic() + 30
    while not worker.has_room() and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    assert worker.has_room() and log == [("done", "first")]


def test_aging_releases_a_long_request_after_max_wait_under_a_stream_of_short_ones(tiny_engine: HFEngine) -> None:
    clock = Clock()
    worker, released = worker_over(tiny_engine, Admission.SJF, max_wait_s=6.0, clock=clock)
    short = tiny_engine.encode("say cat 1 times")
    log: list[tuple[str, str]] = []
    finished = threading.Event()
    submit(worker, short, "first", 1, 2, log)  # occupies the slot first
    submit(worker, tiny_engine.encode("repeat kite 20 times"), "long", 500, 2, log, finished)
    for index in range(12):
        submit(worker, short, f"short-{index}", 1, 2, log)
    worker.start()
    assert finished.wait(30)
    worker.stop()
    # Each short request runs 1-2 steps (one tick each): without aging "long" would go last (13th); with a 6-tick
    # bound it goes at the first release once 6 ticks have passed, ahead of every short request queued with it.
    position = released.index("long")
    assert 1 < position < 7, released
    assert released[0] == "first"


def test_cancel_and_refusals_reach_the_sink(tiny_engine: HFEngine) -> None:
    worker, _ = worker_over(tiny_engine, Admission.FCFS, delay_s=0.01)
    log: list[tuple[str, str]] = []
    ids = tiny_engine.encode("repeat lamp 20 times")
    running_done = threading.Event()
    _, running = submit(worker, ids, "running", None, 40, log, running_done)
    queued_key, queued = submit(worker, ids, "queued", None, 40, log)
    refused_done = threading.Event()
    _, refused = submit(worker, list(range(300)), "refused", None, 4, log, refused_done)  # over max_model_len 256
    worker.start()
    worker.cancel(queued_key)
    assert refused_done.wait(30) and running_done.wait(30)
    worker.stop()
    assert queued.failure is not None and queued.failure[1] == CANCELLED
    assert refused.failure is not None and refused.failure[2] == 400 and "refused" in refused.failure[0]
    assert running.row is not None and running.row.num_tokens >= 1


class CountingPredictor:
    """Lengths by prompt size; fails for the request id 'bad'; remembers each call's size."""

    def __init__(self, gate: threading.Event) -> None:
        self.calls: list[int] = []
        self.gate = gate

    def predict_requests(self, requests: Sequence[Request]) -> list[int]:
        self.gate.wait(10)
        self.calls.append(len(requests))
        if any(request.id == "bad" for request in requests):
            raise KeyError("bad")
        return [len(request.prompt) for request in requests]


def test_predictor_thread_groups_arrivals_and_survives_a_failing_request() -> None:
    gate = threading.Event()
    predictor = CountingPredictor(gate)
    metrics = ServerMetrics()
    service = PredictionService(predictor, metrics, most_per_call=16)
    futures = [service.submit([Request(id=str(index), prompt="x" * index)]) for index in range(1, 6)]
    failing = service.submit([Request(id="bad", prompt="yy"), Request(id="ok", prompt="zzz")])
    gate.set()
    assert [future.result(10) for future in futures] == [[1], [2], [3], [4], [5]]
    assert failing.result(10) == [None, 3]
    service.stop()
    assert max(predictor.calls) > 1  # what arrived during a call was predicted together in the next one
    assert metrics.predictor_errors >= 1 and metrics.predictor_requests == sum(predictor.calls)


def test_predictor_calls_can_take_turns_with_the_engine_steps(tiny_engine: HFEngine) -> None:
    """With run_on=worker.call each predictor call runs on the engine thread, between two steps; after the engine
    thread stops, a prediction comes back as None instead of hanging."""
    worker, _ = worker_over(tiny_engine, Admission.SJF)
    threads: list[str] = []

    class Where:
        def predict_requests(self, requests: Sequence[Request]) -> list[int]:
            threads.append(threading.current_thread().name)
            return [7] * len(requests)

    service = PredictionService(Where(), ServerMetrics(), run_on=worker.call)
    worker.start()
    assert service.predict([Request(id="a", prompt="x")]) == [7]
    worker.stop()
    assert service.predict([Request(id="b", prompt="y")]) == [None]
    service.stop()
    assert threads == ["seqsched-engine"]
