"""The server's one queue (pure): fcfs and sjf orders from serve's policy objects, interactive before batch, and the
aging bound: once an item is overdue nothing with a later deadline is released before it, so nothing starves."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.policy.scheduler import Admission, ScheduleConfig
from serving.server.queue import Lane, QueueConfig, RequestQueue


def queue(policy: Admission = Admission.SJF, max_wait_s: float = 100.0, **kwargs: object) -> RequestQueue:
    return RequestQueue(QueueConfig(ScheduleConfig(limit=512, policy=policy), max_wait_s=max_wait_s, **kwargs))


def drain(items: RequestQueue, now: float = 0.0) -> list[int]:
    order = []
    while (ticket := items.pop(now)) is not None:
        order.append(ticket.key)
    return order


def test_fcfs_releases_in_arrival_order_whatever_the_predictions() -> None:
    items = queue(Admission.FCFS)
    for key, predicted in enumerate([300, 5, 80, 1]):
        items.push(key, Lane.INTERACTIVE, now=key * 0.1, budget=512, predicted=predicted)
    assert drain(items, 1.0) == [0, 1, 2, 3]


def test_sjf_releases_shortest_predicted_first_ties_by_arrival() -> None:
    items = queue(Admission.SJF)
    for key, predicted in enumerate([300, 5, 80, 5, None]):
        items.push(key, Lane.INTERACTIVE, now=key * 0.1, budget=256, predicted=predicted)
    # A request the predictor could not judge ranks as its whole budget (256): before 300, after 80.
    assert drain(items, 1.0) == [1, 3, 2, 4, 0]


def test_sjf_rank_is_serve_s_priority_margin_included() -> None:
    items = RequestQueue(QueueConfig(ScheduleConfig(policy=Admission.SJF, margin_tokens=7, margin_ratio=0.5)))
    ticket = items.push(0, Lane.BATCH, now=0.0, budget=512, predicted=10)
    assert ticket.rank == items.policy.first([10], [512], items.config.schedule).priorities[0] == 22


def test_interactive_requests_go_before_batch_lines() -> None:
    items = queue(Admission.SJF)
    items.push(0, Lane.BATCH, 0.0, 512, predicted=1)
    items.push(1, Lane.INTERACTIVE, 1.0, 512, predicted=400)
    items.push(2, Lane.BATCH, 2.0, 512, predicted=2)
    items.push(3, Lane.INTERACTIVE, 3.0, 512, predicted=20)
    assert drain(items, 4.0) == [3, 1, 0, 2]
    shared = queue(Admission.SJF, interactive_first=False)
    for key, (lane, predicted) in enumerate([(Lane.BATCH, 1), (Lane.INTERACTIVE, 400), (Lane.INTERACTIVE, 20)]):
        shared.push(key, lane, float(key), 512, predicted=predicted)
    assert drain(shared, 4.0) == [0, 2, 1]


def test_an_overdue_item_goes_first_earliest_deadline_first() -> None:
    items = queue(Admission.SJF, max_wait_s=10.0, batch_max_wait_s=50.0)
    items.push(0, Lane.INTERACTIVE, 0.0, 512, predicted=500)
    items.push(1, Lane.BATCH, 0.0, 512, predicted=400)
    items.push(2, Lane.INTERACTIVE, 5.0, 512, predicted=1)
    assert items.pop(9.9).key == 2  # nothing overdue yet: shortest first
    items.push(3, Lane.INTERACTIVE, 9.9, 512, predicted=1)
    assert items.pop(10.0).key == 0  # deadline 10 reached: ahead of the shorter newcomer
    assert items.pop(10.0).key == 3
    assert items.pop(49.0).key == 1 and items.pop(49.0) is None


def test_remove_and_reused_keys() -> None:
    items = queue(Admission.SJF)
    items.push(0, Lane.INTERACTIVE, 0.0, 512, predicted=1)
    items.push(1, Lane.INTERACTIVE, 0.0, 512, predicted=2)
    assert items.remove(0) is not None and items.remove(0) is None and 0 not in items
    items.push(0, Lane.INTERACTIVE, 1.0, 512, predicted=3)  # the key again: its old entries must not come back
    assert drain(items, 2.0) == [1, 0] and len(items) == 0
    with pytest.raises(ValueError, match="queued already"):
        items.push(5, Lane.BATCH, 0.0, 1)
        items.push(5, Lane.BATCH, 0.0, 1)


def test_a_long_request_never_starves_under_a_stream_of_short_ones() -> None:
    """One slot frees per second and a short request arrives every half second: SJF alone would keep the long
    request waiting for ever; with aging it is released at the first pop after its wait reaches max_wait_s."""
    items = queue(Admission.SJF, max_wait_s=10.0)
    items.push(0, Lane.INTERACTIVE, 0.0, 512, predicted=500)
    released_at = None
    key = 1
    for tick in range(60):
        now = float(tick)
        for half in (0.0, 0.5):
            items.push(key, Lane.INTERACTIVE, now + half - 0.5, 512, predicted=3)
            key += 1
        if items.pop(now).key == 0:
            released_at = now
            break
    assert released_at == 10.0


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    policy=st.sampled_from([Admission.FCFS, Admission.SJF]),
    interactive_first=st.booleans(),
)
def test_no_item_with_a_later_deadline_passes_an_overdue_one(
    seed: int, policy: Admission, interactive_first: bool
) -> None:
    """The bound's premise, on random traffic over both lanes: whenever some item is overdue at a pop, the item
    popped has the earliest deadline of all queued items."""
    rng = random.Random(seed)
    items = queue(policy, max_wait_s=5.0, batch_max_wait_s=12.0, interactive_first=interactive_first)
    now, key = 0.0, 0
    popped = 0
    for _ in range(300):
        now += rng.expovariate(1.0)
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            lane = rng.choice([Lane.INTERACTIVE, Lane.BATCH])
            items.push(key, lane, now, 512, predicted=rng.choice([None, rng.randint(1, 512)]))
            key += 1
        queued = list(items)
        ticket = items.pop(now)
        if ticket is None:
            continue
        popped += 1
        overdue = [other for other in queued if other.deadline_s <= now]
        if overdue:
            assert ticket.deadline_s == min(other.deadline_s for other in queued)
    assert popped
