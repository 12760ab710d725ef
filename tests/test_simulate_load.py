"""The load simulator: the server's own queue in front of `places` running rows, a step time per decode step."""

from __future__ import annotations

import pytest

from serving.policy.scheduler import Admission, ScheduleConfig
from serving.server.queue import QueueConfig
from serving.server.simulate_load import poisson_arrivals, simulate_load


def _queue(policy: Admission, limit: int = 10, max_wait_s: float = 1e9) -> QueueConfig:
    return QueueConfig(ScheduleConfig(policy=policy, limit=limit), max_wait_s=max_wait_s)


def _free(_: int) -> float:
    return 0.0


def _second(_: int) -> float:
    return 1.0


def test_one_place_serves_in_the_queues_order() -> None:
    """Three requests at t=0, one place, 1 s a step, free prefills: FCFS runs them in arrival order, SJF by
    predicted length (here the true one); a request of length L ends L steps after its start (its stop token)."""
    arrivals, lengths = [0.0, 0.0, 0.0], [5, 1, 3]
    fcfs = simulate_load(arrivals, lengths, None, 1, _second, _queue(Admission.FCFS), _free)
    assert fcfs.latency_s == [5.0, 6.0, 9.0] and fcfs.ttft_s == [0.0, 5.0, 6.0]
    sjf = simulate_load(arrivals, lengths, lengths, 1, _second, _queue(Admission.SJF), _free)
    assert sjf.latency_s == [9.0, 1.0, 4.0]
    assert sjf.summary()["latency_mean_s"] < fcfs.summary()["latency_mean_s"]
    assert sjf.summary()["throughput_rps"] == fcfs.summary()["throughput_rps"] == pytest.approx(3 / 9)


def test_places_run_together_and_the_limit_caps() -> None:
    """Two places decode side by side; a request at the limit takes limit - 1 decode steps after its prefill's
    token (no stop token); the prefill's time counts in the time to first token."""
    sim = simulate_load([0.0, 0.0], [10, 4], None, 2, _second, _queue(Admission.FCFS, limit=10), lambda n: 0.5)
    assert sim.latency_s == [9.5, 4.5] and sim.ttft_s == [0.5, 0.5] and sim.time_s == 9.5


def test_aging_bounds_the_wait_of_a_long_request() -> None:
    """SJF, one place: a long request arriving early is passed by every short one that arrives after it until it
    is overdue; then it goes next, so it waits at most max_wait_s plus the running request's service."""
    arrivals = [0.0, 0.1] + [0.2 + 0.5 * index for index in range(40)]
    lengths = [3, 20] + [3] * 40
    unbounded = simulate_load(arrivals, lengths, lengths, 1, _second, _queue(Admission.SJF, limit=32), _free)
    assert unbounded.ttft_s[1] > 100  # starved behind every short one
    aged = simulate_load(arrivals, lengths, lengths, 1, _second, _queue(Admission.SJF, limit=32, max_wait_s=5.0), _free)
    assert 5.0 <= aged.ttft_s[1] <= 5.0 + 3
    assert aged.latency_s[1] == pytest.approx(aged.ttft_s[1] + 20)


def test_idle_time_jumps_to_the_next_arrival() -> None:
    sim = simulate_load([0.0, 100.0], [2, 2], None, 1, _second, _queue(Admission.FCFS), _free)
    assert sim.latency_s == [2.0, 2.0] and sim.time_s == 102.0


def test_poisson_arrivals_and_bad_input() -> None:
    times = poisson_arrivals(2000, 4.0, seed=1)
    assert times[0] == 0.0 and times == sorted(times) and times == poisson_arrivals(2000, 4.0, seed=1)
    assert times[-1] / 1999 == pytest.approx(0.25, rel=0.1)
    with pytest.raises(ValueError, match="rate_rps"):
        poisson_arrivals(3, 0.0, seed=1)
    with pytest.raises(ValueError, match="one entry per request"):
        simulate_load([0.0], [1, 2], None, 1, _second, _queue(Admission.FCFS))
    with pytest.raises(ValueError, match="must not decrease"):
        simulate_load([1.0, 0.0], [1, 2], None, 1, _second, _queue(Admission.FCFS))
