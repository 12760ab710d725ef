"""The one queue every request waits in before the engine takes it (pure: no torch, no I/O, no clock of its own).

Interactive requests (chat, completions) and batch-job lines join the same queue; the engine thread pops the next
one whenever a running slot is free. The order, for a pop at time `now`:

1. Overdue first. Every item has a deadline: its arrival plus its lane's bound (`max_wait_s` for interactive
   requests, `batch_max_wait_s` for batch lines). Items whose deadline has passed go first, earliest deadline
   first (ties by arrival).
2. Otherwise interactive before batch (with `interactive_first`; without it the two lanes share one order).
3. Within a lane, the admission policy's rank (the same policy objects as `seqsched serve`,
   serving.policy.admission): fcfs ranks by arrival, sjf by the margin-adjusted predicted length, ties by arrival.

The bound (what aging guarantees, tested in tests/test_server_queue.py): once an item's deadline has passed, no
item with a later deadline is popped before it. So an item waits at most its lane's bound plus the time the
engine takes to free one slot for each overdue item with an earlier deadline: with one lane, at most max_wait_s
plus what FCFS would make it wait for the requests that arrived before it and are still queued. Whatever the
predicted lengths, nothing starves.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from serving.policy.admission import AdmissionPolicy, make_policy
from serving.policy.scheduler import Admission, ScheduleConfig


class Lane(enum.Enum):
    """Where a queued item comes from."""

    INTERACTIVE = "interactive"
    """A chat or text completion waiting on an open HTTP request."""
    BATCH = "batch"
    """A line of a batch job."""


@dataclass(frozen=True)
class QueueConfig:
    """How the queue orders what waits."""

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """The policy (schedule.policy: fcfs or sjf) and what its rank reads (limit, margins)."""
    max_wait_s: float = 10.0
    """Interactive items become overdue after waiting this long."""
    batch_max_wait_s: float = 3600.0
    """Batch lines become overdue after waiting this long."""
    interactive_first: bool = True

    def __post_init__(self) -> None:
        if self.max_wait_s <= 0 or self.batch_max_wait_s <= 0:
            raise ValueError("the queue's wait bounds must be > 0")
        if self.schedule.policy not in (Admission.FCFS, Admission.SJF):
            raise ValueError(f"the queue orders by fcfs or sjf, got {self.schedule.policy.value}")

    def bound(self, lane: Lane) -> float:
        """The wait after which an item of this lane is overdue."""
        return self.max_wait_s if lane is Lane.INTERACTIVE else self.batch_max_wait_s


@dataclass(frozen=True)
class Ticket:
    """A queued item as the queue sees it."""

    key: int
    """The caller's key for the item."""
    lane: Lane
    arrival_s: float
    """When it joined (the caller's clock, seconds)."""
    deadline_s: float
    """arrival_s plus its lane's bound: overdue from then on."""
    rank: int
    """The policy's rank within its lane (lower first): the arrival number (fcfs) or the adjusted predicted length."""
    sequence: int
    """Arrival number (ties and fcfs)."""
    predicted: int | None = None


class RequestQueue:
    """Items waiting for the engine, popped by deadline, lane and policy rank (see the module docstring)."""

    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self.policy: AdmissionPolicy = make_policy(config.schedule.policy)
        self._live: dict[int, Ticket] = {}
        self._by_deadline: list[tuple[float, int, int]] = []
        self._by_rank: dict[Lane, list[tuple[int, int, int]]] = {lane: [] for lane in Lane}
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def __iter__(self) -> Iterator[Ticket]:
        return iter(list(self._live.values()))

    def depth(self, lane: Lane) -> int:
        """Items of a lane waiting."""
        return sum(ticket.lane is lane for ticket in self._live.values())

    def rank(self, predicted: int | None, budget: int, sequence: int) -> int:
        """The policy's rank of an item: its priority from the admission policy (None: arrival order). A request
        the predictor could not judge ranks as the longest (aging still bounds its wait)."""
        if not self.policy.needs_predictions:
            return sequence
        length = budget if predicted is None else predicted
        priorities = self.policy.first([length], [budget], self.config.schedule).priorities
        return sequence if priorities is None else int(priorities[0])

    def push(self, key: int, lane: Lane, now: float, budget: int, predicted: int | None = None) -> Ticket:
        """Queue an item (its key must not be queued already); budget: the most tokens it may generate."""
        if key in self._live:
            raise ValueError(f"item {key} is queued already")
        sequence = next(self._sequence)
        ticket = Ticket(
            key, lane, now, now + self.config.bound(lane), self.rank(predicted, budget, sequence), sequence, predicted
        )
        self._live[key] = ticket
        heapq.heappush(self._by_deadline, (ticket.deadline_s, sequence, key))
        heapq.heappush(self._by_rank[lane], (ticket.rank, sequence, key))
        return ticket

    def remove(self, key: int) -> Ticket | None:
        """Take an item out without releasing it (cancelled); None when it is not queued."""
        return self._live.pop(key, None)

    def pop(self, now: float) -> Ticket | None:
        """The next item to release at time `now` (None when empty)."""
        overdue = self._head(self._by_deadline)
        if overdue is not None and overdue[0] <= now:
            return self._take(overdue[2])
        heads = {lane: self._head(self._by_rank[lane]) for lane in Lane}
        if self.config.interactive_first and heads[Lane.INTERACTIVE] is not None:
            return self._take(heads[Lane.INTERACTIVE][2])
        candidates = [head for head in heads.values() if head is not None]
        return self._take(min(candidates)[2]) if candidates else None

    def oldest_wait_s(self, now: float) -> float:
        """How long the longest-waiting item has waited (0 when empty)."""
        return max((now - ticket.arrival_s for ticket in self._live.values()), default=0.0)

    def _head(self, heap: list[tuple]) -> tuple | None:
        """The heap's first entry whose item is still queued; entries of popped or removed items (each entry holds
        its item's arrival number, so a key reused later is told apart) are dropped as they come up."""
        while heap:
            entry = heap[0]
            ticket = self._live.get(entry[2])
            if ticket is not None and ticket.sequence == entry[1]:
                return entry
            heapq.heappop(heap)
        return None

    def _take(self, key: int) -> Ticket:
        return self._live.pop(key)
