"""What a continuous engine with a bounded KV cache does with a set of requests (pure, no torch): vLLM's paged cache,
or our pool with --engine.kv_budget_tokens, step by step.

The model (stated so the bench can check it, simulated beside measured):
- Every request is submitted at t=0 and waits in (priority, arrival) order. Each step, waiting requests start in that
  order while the engine has a free sequence slot and, by the admission rule, KV room: greedy (vLLM's rule) needs
  the prompt (a resumed request: its whole context) to fit what the running requests use now; a reservation rule
  (predicted) needs every running request and the newcomer, each growing to its reservation and then leaving,
  never to need more blocks at once than the cache has (seqsched.engines.pool_rules.reservations_fit); a held one
  (reserve-max) needs every reservation whole to fit at once.
  No request skips one that waits before it.
- A step decodes one token for every running request whose prefill is done and prefills the newcomers, at most
  `max_batched_tokens` tokens in all (vLLM's chunked prefill; decodes first). Its time is the measured decode step
  of that many rows at their mean context plus the prefill of the tokens prefilled.
- Before a step, a running request that needs a new KV block gets one; when none is free, the running request of
  the lowest priority (latest arrival on ties) is preempted: its blocks are freed and it waits again, to resume by
  prefilling its prompt and the tokens it had generated (vLLM's recompute) or, `scratch`, from its prompt (our pool).
- A request finishes after its true length plus the stop token, or at its cap.

Our pool (`Layout.PADDED`, KVEngine.pool) differs in how steps are made and what they cost, as
seqsched.engines.hf_continuous does them (their shared rules: seqsched.engines.pool_rules): waiting requests are
admitted only once `admit_min` slots are free (or none runs), and the newcomers share one prefill of their contexts
padded to the longest (its logits give each its first token); a decode step computes every row in the cache, finished
rows included until the pool compacts (at an admission, or once admit_min have finished, or they outnumber a quarter
of the running), each over the cache's width: the longest context in it (left-padding alignment). KV is counted by the
token and a preempted request restarts from its prompt; until the pool compacts, its row stays in the cache like a
finished one. And the pool copies its cache (`KVEngine.copy_slot_s` a row-column of the new buffer): when newcomers
join (one buffer of every row at the wider width plus `reserve` spare columns), when it compacts (the kept rows over
the buffer's every column, spare and trimmed ones included) and when a step finds no spare column (the rows at twice
the width).
"""

from __future__ import annotations

import enum
import heapq
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from seqsched.engines.pool_rules import DEFAULT_RESERVE, admits, compacts, default_admit_min, reservations_fit
from seqsched.stats import nearest_rank
from serving.policy.stepcost import CostModel


class Resume(enum.Enum):
    """How a preempted request comes back."""

    RECOMPUTE = "recompute"
    """Prefill its prompt and the tokens it had generated, then go on (vLLM)."""
    SCRATCH = "scratch"
    """Start again from its prompt (our pool; greedy outputs are the same)."""


class Layout(enum.Enum):
    """How the engine lays out its KV cache, and so how its steps are made and what they cost."""

    PAGED = "paged"
    """vLLM: blocks per request, chunked prefill within max_batched_tokens, a decode step at the rows' mean context."""
    PADDED = "padded"
    """Our pool: rows left-padded to one width, newcomers in one padded prefill once admit_min slots are free,
    finished rows computed until the pool compacts (see the module docstring)."""


@dataclass(frozen=True)
class LengthStats:
    """Generated lengths of a held-out set: their mean and standard deviation (what a run's total is expected to
    need, without predicting any one request)."""

    mean: float
    stdev: float

    @classmethod
    def of(cls, lengths: Sequence[int]) -> LengthStats:
        """The stats of these lengths."""
        if not lengths:
            raise ValueError("no lengths")
        return cls(statistics.fmean(lengths), statistics.pstdev(lengths))


@dataclass(frozen=True)
class KVEngine:
    """The engine the simulator assumes."""

    kv_tokens: int
    """KV cache size in tokens."""
    max_seqs: int = 256
    """Most requests running at once."""
    block_size: int = 16
    """KV is held in whole blocks of this many tokens (1: by the token)."""
    max_batched_tokens: int | None = 4096
    """Tokens one step may compute (decodes plus prefill chunks); None: no bound (a step prefills all newcomers)."""
    resume: Resume = Resume.RECOMPUTE
    layout: Layout = Layout.PAGED
    admit_min: int = 1
    """Free slots a padded engine waits for before it admits (Layout.PADDED only)."""
    copy_slot_s: float = 0.0
    """Seconds per row and column of a cache buffer a padded engine copies into (Layout.PADDED only; 0: copies free)."""
    reserve: int = DEFAULT_RESERVE
    """Spare columns a padded engine's buffer gets at each join (Layout.PADDED only)."""

    @classmethod
    def pool(
        cls,
        kv_tokens: int,
        slots: int,
        admit_min: int | None = None,
        copy_slot_s: float = 0.0,
        reserve: int = DEFAULT_RESERVE,
    ) -> KVEngine:
        """Our continuous pool (seqsched.engines.hf_continuous) with a KV budget of kv_tokens: KV by the token, no
        null block, padded layout, a preempted request restarts; admit_min as the engine's (default: slots // 8),
        copy_slot_s and reserve as measured and set there."""
        if copy_slot_s < 0 or reserve < 1:
            raise ValueError(f"copy_slot_s must be >= 0 and reserve >= 1, got {copy_slot_s}, {reserve}")
        return cls(
            kv_tokens=kv_tokens,
            max_seqs=slots,
            block_size=1,
            max_batched_tokens=None,
            null_blocks=0,
            resume=Resume.SCRATCH,
            layout=Layout.PADDED,
            admit_min=default_admit_min(slots) if admit_min is None else min(admit_min, slots),
            copy_slot_s=copy_slot_s,
            reserve=reserve,
        )

    def blocks(self, tokens: int) -> int:
        """Whole blocks holding `tokens`."""
        return math.ceil(tokens / self.block_size)

    null_blocks: int = 1
    """Blocks the engine keeps out of use (vLLM's null block)."""

    @property
    def total_blocks(self) -> int:
        """Blocks requests can hold."""
        return self.kv_tokens // self.block_size - self.null_blocks

    def holds_all(self, prompts: Sequence[int], budgets: Sequence[int], lengths: LengthStats | None = None) -> bool:
        """True when every request runs from the first steps to its end beside all the others: no more of them
        than max_seqs, and the cache holds their final contexts at once (the peak is never above that sum). Without
        `lengths`, each final context is its prompt plus its whole budget (certain); with a held-out set's lengths,
        the expected sum (prompt + min(budget, mean) each, half a block of rounding each) plus two standard
        deviations of the sum. Then no order or admission rule changes who runs when (only which prefill chunk goes
        first), and no request is expected to be preempted."""
        if len(prompts) != len(budgets):
            raise ValueError("one budget per prompt")
        if len(prompts) > self.max_seqs:
            return False
        return self.needed_tokens(prompts, budgets, lengths) <= self.total_blocks * self.block_size

    def needed_tokens(self, prompts: Sequence[int], budgets: Sequence[int], lengths: LengthStats | None = None) -> int:
        """KV tokens the requests' final contexts need at once: in whole blocks with their whole budgets, or (with
        `lengths`) the expected sum plus two standard deviations, whichever is smaller."""
        pairs = list(zip(prompts, budgets, strict=True))
        certain = sum(self.blocks(prompt + budget) for prompt, budget in pairs) * self.block_size
        if lengths is None:
            return certain
        expected = (
            sum(prompt + min(budget, lengths.mean) for prompt, budget in pairs) + len(pairs) * self.block_size / 2
        )
        return min(certain, math.ceil(expected + 2 * lengths.stdev * math.sqrt(len(pairs))))


@dataclass
class _Request:
    index: int
    rank: tuple[int, int]
    prompt: int
    steps: int
    """Tokens it generates before it finishes (its true length plus the stop token, or its cap)."""
    reserve: int | None
    generated: int = 0
    prefilled: int = 0
    """Tokens of its current prefill computed so far."""
    prefill_target: int = 0

    @property
    def context(self) -> int:
        return self.prompt + self.generated


@dataclass
class KVRun:
    """A simulated run."""

    time_s: float = 0.0
    steps: int = 0
    completion_s: list[float] = field(default_factory=list)
    preemptions: int = 0
    recomputed_tokens: int = 0
    max_running: int = 0
    running_steps: int = 0
    """Sum over steps of the requests running (mean batch = this / steps)."""
    prefill_s: float = 0.0
    """The part of time_s spent prefilling (padded prefills; on a paged engine the prefill part of its steps)."""
    sampled_tokens: int = 0
    """Tokens sampled, recomputed ones included (each request's first from its prefill; no finished row's)."""
    copy_s: float = 0.0
    """The part of time_s spent copying a padded pool's cache (joins, compactions, growth)."""

    @property
    def requests(self) -> int:
        """Requests served."""
        return len(self.completion_s)

    @property
    def samples_per_s(self) -> float:
        """Requests per second of the whole run."""
        return self.requests / self.time_s if self.time_s else 0.0

    @property
    def latency_mean_s(self) -> float:
        """Mean completion time from t=0."""
        return statistics.fmean(self.completion_s) if self.completion_s else 0.0

    @property
    def latency_p99_s(self) -> float:
        """99th percentile completion time."""
        return nearest_rank(self.completion_s, 99)

    def summary(self) -> dict[str, float]:
        """The figures the bench and the tuner compare."""
        return {
            "time_s": self.time_s,
            "samples_per_s": self.samples_per_s,
            "latency_mean_s": self.latency_mean_s,
            "latency_p99_s": self.latency_p99_s,
            "steps": float(self.steps),
            "preemptions": float(self.preemptions),
            "recomputed_tokens": float(self.recomputed_tokens),
            "max_running": float(self.max_running),
            "mean_running": self.running_steps / self.steps if self.steps else 0.0,
            "prefill_s": self.prefill_s,
            "decode_s": self.time_s - self.prefill_s - self.copy_s,
            "copy_s": self.copy_s,
            "row_steps": float(self.sampled_tokens),
        }


def simulate_kv(
    true: Sequence[int],
    prompts: Sequence[int],
    caps: Sequence[int],
    engine: KVEngine,
    cost: CostModel,
    priorities: Sequence[int] | None = None,
    reserves: Sequence[int] | None = None,
    hold: bool = False,
) -> KVRun:
    """Simulate serving every request at once on a KV-bounded continuous engine (see the module docstring).
    priorities: lower first (None: arrival order); reserves: each request's reservation (None: greedy); hold: the
    reservations are held whole to the end (reserve-max's static allocation)."""
    count = len(true)
    if not (len(prompts) == len(caps) == count) or (priorities is not None and len(priorities) != count):
        raise ValueError("true, prompts, caps and priorities need one entry per request")
    if reserves is not None and len(reserves) != count:
        raise ValueError("reserves need one entry per request")
    requests = [
        _Request(
            index,
            (0 if priorities is None else int(priorities[index]), index),
            int(prompts[index]),
            int(caps[index]) if int(true[index]) >= int(caps[index]) else int(true[index]) + 1,
            None if reserves is None else int(reserves[index]),
        )
        for index in range(count)
    ]
    waiting = [(request.rank, request.index) for request in requests]
    heapq.heapify(waiting)
    running: list[_Request] = []
    run = KVRun(completion_s=[0.0] * count)
    clock = 0.0
    finished = 0
    state = _AdmitState()
    padded = engine.layout is Layout.PADDED
    retired = _Retired()
    buffer = _Buffer(engine)
    while finished < count:
        if not padded:
            _admit(waiting, running, requests, engine, state, hold)
        elif waiting and admits(len(running), engine.max_seqs, len(waiting), engine.admit_min):
            old = len(running)
            newcomers = _admit(waiting, running, requests, engine, state, hold)
            if newcomers:
                copy_s = buffer.keep(old) if retired.rows else 0.0  # the pool compacts before newcomers join
                retired.clear()
                prefill_s = _padded_prefill(newcomers, cost)
                clock += prefill_s
                run.prefill_s += prefill_s
                run.sampled_tokens += len(newcomers)
                joining = [request for request in newcomers if request.generated < request.steps]
                if len(joining) < len(newcomers) and joining:  # the prefill's pool drops those done at once
                    copy_s += engine.copy_slot_s * len(joining) * (_widest(newcomers) + engine.reserve)
                for request in newcomers:
                    if request.generated >= request.steps:  # done with the prefill's token: never joins the pool
                        run.completion_s[request.index] = clock
                        running.remove(request)
                        finished += 1
                        state.changes += 1
                if joining:
                    copy_s += buffer.join(old, len(joining), _widest(running))
                clock += copy_s
                run.copy_s += copy_s
        before = run.preemptions
        _make_room(running, waiting, engine, run, retired if padded else None)
        state.changes += run.preemptions - before
        generated = sum(request.generated for request in running)
        if padded:
            copy_s = buffer.step(len(running) + retired.rows, max(retired.width, _widest(running)))
            clock += copy_s
            run.copy_s += copy_s
            step_s, done = _padded_step(running, retired, cost)
        else:
            step_s, prefill_s, done = _step(running, engine, cost)
            run.prefill_s += prefill_s
        run.sampled_tokens += sum(request.generated for request in running) - generated
        clock += step_s
        run.steps += 1
        run.running_steps += len(running)
        run.max_running = max(run.max_running, len(running))
        for request in done:
            run.completion_s[request.index] = clock
            running.remove(request)
            finished += 1
            state.changes += 1
            if padded:
                retired.add(request.context)
        if padded and compacts(len(running), retired.rows, engine.admit_min):
            if retired.rows:
                copy_s = buffer.keep(len(running))
                clock += copy_s
                run.copy_s += copy_s
            retired.clear()
    run.time_s = clock
    return run


@dataclass
class _Retired:
    """A padded pool's finished rows still in its cache: how many, and the longest context among them (they are
    computed, one token a step, until the pool compacts)."""

    rows: int = 0
    width: int = 0

    def add(self, context: int) -> None:
        self.rows += 1
        self.width = max(self.width, context)

    def clear(self) -> None:
        self.rows, self.width = 0, 0


@dataclass
class _Buffer:
    """A padded pool's cache buffer: its columns (filled, spare and trimmed ones) and the spare ones left; each
    method returns the seconds of the copy it makes."""

    engine: KVEngine
    columns: int = 0
    spare: int = 0

    def keep(self, rows: int) -> float:
        """Rows dropped: the kept rows are gathered over every column of the buffer (none kept: the buffer goes)."""
        if not rows:
            self.columns = self.spare = 0
            return 0.0
        return self.engine.copy_slot_s * rows * self.columns

    def join(self, old: int, new: int, width: int) -> float:
        """Newcomers' rows added to `old` rows: one buffer of them all at `width` plus the reserve (the prefill's
        own buffer, no copy, when the pool was empty)."""
        self.columns, self.spare = width + self.engine.reserve, self.engine.reserve
        return self.engine.copy_slot_s * (old + new) * self.columns if old else 0.0

    def step(self, rows: int, width: int) -> float:
        """One decode step writes a column: without a spare one, the buffer grows to twice its filled width."""
        if not rows:
            return 0.0
        seconds = 0.0
        if self.spare <= 0:
            grown = max(self.engine.reserve, width)
            self.columns, self.spare = width + grown, grown
            seconds = self.engine.copy_slot_s * rows * self.columns
        self.spare -= 1
        return seconds


def _widest(requests: Sequence[_Request]) -> int:
    """The longest context among these requests (0 for none)."""
    return max((request.context for request in requests), default=0)


def _used_blocks(running: Sequence[_Request], engine: KVEngine) -> int:
    return sum(engine.blocks(request.context + 1) for request in running)


def _expected(request: _Request) -> tuple[int, int]:
    """(context now, tokens still expected): its reservation less what it generated, at least one."""
    assert request.reserve is not None
    return request.context, max(1, request.prompt + request.reserve - request.context)


def _held(request: _Request, engine: KVEngine) -> int:
    """Blocks a held reservation takes from admission to the end."""
    assert request.reserve is not None
    return engine.blocks(max(request.context + 1, request.prompt + request.reserve))


@dataclass
class _AdmitState:
    """When admission last refused the head of the queue (it is asked again only once something changed)."""

    changes: int = 0
    """Requests that started, finished or were preempted so far."""
    blocked_at: int = -1
    blocked_head: int = -1

    def refused(self, head: int) -> None:
        self.blocked_at, self.blocked_head = self.changes, head


def _admit(
    waiting: list,
    running: list[_Request],
    requests: Sequence[_Request],
    engine: KVEngine,
    state: _AdmitState,
    hold: bool,
) -> list[_Request]:
    """Start waiting requests in order while there is a slot and, by the rule, KV room; the ones started."""
    same = state.blocked_at == state.changes and waiting and waiting[0][1] == state.blocked_head
    if same and (hold or requests[waiting[0][1]].reserve is None):
        # Nothing left or joined since the head was refused: by the greedy or held rule the answer is the same (by
        # the predicted one it may change as the running requests move on toward their ends).
        return []
    free = engine.total_blocks - _used_blocks(running, engine)
    reserving = [request for request in running if request.reserve is not None]
    held = sum(_held(request, engine) for request in reserving) if hold else 0
    expected = [] if hold else [_expected(request) for request in reserving]
    started: list[_Request] = []
    while waiting and len(running) < engine.max_seqs:
        request = requests[waiting[0][1]]
        need = engine.blocks(request.context + 1)
        if request.reserve is None:
            if need > free and running:
                state.refused(waiting[0][1])
                return started
        else:
            if hold:
                fits = held + _held(request, engine) <= engine.total_blocks
            else:
                fits = reservations_fit([*expected, _expected(request)], engine.total_blocks, engine.block_size)
            if not (fits or not running):
                state.refused(waiting[0][1])
                return started
            if hold:
                held += _held(request, engine)
            else:
                expected.append(_expected(request))
        heapq.heappop(waiting)
        free -= need
        request.prefilled, request.prefill_target = 0, request.context
        running.append(request)
        started.append(request)
        state.changes += 1
    return started


def _make_room(
    running: list[_Request], waiting: list, engine: KVEngine, run: KVRun, retired: _Retired | None = None
) -> None:
    """Preempt the lowest-priority running requests until every running request's next token fits (a padded
    pool's victims stay in its cache, `retired`, until it compacts)."""
    while len(running) > 1 and _used_blocks(running, engine) > engine.total_blocks:
        victim = max(running, key=lambda request: request.rank)
        running.remove(victim)
        run.preemptions += 1
        run.recomputed_tokens += victim.context
        if retired is not None:
            retired.add(victim.context)
        if engine.resume is Resume.SCRATCH:
            victim.generated = 0
        heapq.heappush(waiting, (victim.rank, victim.index))


def _step(running: Sequence[_Request], engine: KVEngine, cost: CostModel) -> tuple[float, float, list[_Request]]:
    """One engine step: decodes first, then prefill chunks within the token budget; its seconds, the prefill's part
    of them and who finished."""
    decoding = [request for request in running if request.prefilled >= request.prefill_target]
    pending = [request for request in running if request.prefilled < request.prefill_target]
    budget = None if engine.max_batched_tokens is None else max(0, engine.max_batched_tokens - len(decoding))
    context = statistics.fmean(request.context for request in decoding) if decoding else 0.0
    prefill_tokens = 0
    done: list[_Request] = []
    for request in decoding:
        request.generated += 1
        if request.generated >= request.steps:
            done.append(request)
    for request in pending:
        left = request.prefill_target - request.prefilled
        chunk = left if budget is None else min(left, budget - prefill_tokens)
        if chunk <= 0:
            break
        request.prefilled += chunk
        prefill_tokens += chunk
        if request.prefilled >= request.prefill_target:  # the prefill samples the first new token
            request.generated += 1
            if request.generated >= request.steps:
                done.append(request)
    seconds = cost.step_s(len(decoding), context) if decoding else 0.0
    prefill_s = cost.prefill_s(1, prefill_tokens) if prefill_tokens else 0.0
    return seconds + prefill_s, prefill_s, done


def _padded_prefill(newcomers: Sequence[_Request], cost: CostModel) -> float:
    """The newcomers' one prefill, padded to the longest context; it samples each one's first token."""
    seconds = cost.prefill_s(len(newcomers), max(request.context for request in newcomers))
    for request in newcomers:
        request.prefilled = request.prefill_target
        request.generated += 1
    return seconds


def _padded_step(running: Sequence[_Request], retired: _Retired, cost: CostModel) -> tuple[float, list[_Request]]:
    """One decode step of a padded pool: every row in the cache (finished ones too) at the longest context."""
    if not running:
        return 0.0, []
    width = max(retired.width, max(request.context for request in running))
    seconds = cost.step_s(len(running) + retired.rows, width)
    if retired.rows:
        retired.width += 1
    done: list[_Request] = []
    for request in running:
        request.generated += 1
        if request.generated >= request.steps:
            done.append(request)
    return seconds, done


__all__ = ["KVEngine", "KVRun", "Layout", "Resume", "simulate_kv"]
