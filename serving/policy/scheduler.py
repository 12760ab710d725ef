"""The scheduling policy, pure data in and out (no torch): predicted lengths -> a plan of batches.

The paper's method (Zheng et al. 2023): sort requests by predicted response length, group them into bins
of `bin_width` tokens, give each bin its own batch size (variable batch size, VBS), cap every batch at its
bin's length, collect the requests that did not finish by then (failure collection, FCR) and recompute
them together at the end with the full limit. The runner (serving.runner.static) applies a plan on an engine;
`seqsched plan` prints one; serving.policy.simulate predicts what one costs.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from seqsched.errors import require

PAPER_VBS: dict[int, int] = {50: 256, 100: 128, 150: 64, 200: 32, 250: 16, 300: 16}
"""The paper's variable batch sizes: a bin capped at up to KEY tokens runs VALUE requests per batch."""


class Strategy(enum.Enum):
    """How requests are grouped into batches."""

    VANILLA = "vanilla"
    """Input order, fixed batch size, every batch runs until all rows finish (or the limit)."""
    SEQSCH = "seqsch"
    """Sorted by predicted length, fixed batch size, no cap below the limit (the paper's 'sort only')."""
    VBS = "vbs"
    """Sorted and binned, each bin with its own batch size, no cap below the limit."""
    FCR = "fcr"
    """Sorted, binned, VBS, each batch capped at its bin's length; unfinished rows are recomputed (the full method)."""


class Admission(enum.Enum):
    """Continuous-batching engines: the order waiting requests take free slots, and whether FCR caps apply
    (the policy objects are in serving.policy.admission)."""

    AUTO = "auto"
    """From the strategy: vanilla -> fcfs, seqsch and vbs -> sjf, fcr -> sjf-fcr."""
    FCFS = "fcfs"
    """Arrival order, every request with its whole budget."""
    SJF = "sjf"
    """Shortest predicted length first (an oracle predictor makes it SJF by the true lengths)."""
    SJF_FCR = "sjf-fcr"
    """SJF, each request capped at its predicted bin's edge; the ones cut short are recomputed after the rest."""
    LPT = "lpt"
    """Longest predicted first (the long requests start early: a shorter makespan for an offline job)."""


class KVAdmission(enum.Enum):
    """Continuous engines with a bounded KV cache: when a waiting request may start."""

    GREEDY = "greedy"
    """When its prompt fits the free KV cache; a full cache preempts a running request, recomputed later (vLLM's
    own rule)."""
    RESERVE_MAX = "reserve-max"
    """When its prompt plus its whole budget (max_tokens) fits beside what the running requests reserved: never
    preempts, few run at once."""
    PREDICTED = "predicted"
    """When its prompt plus its predicted length (with the margin: margin_ratio, margin_tokens; at most its budget)
    fits beside the running requests' reservations; one that outgrows its reservation runs on while the cache allows,
    else is preempted as with greedy."""
    AUTO = "auto"
    """Chosen per served workload by simulation (serving.policy.kv_tuning: rule, order and margin from the predictor's
    held-out errors, --tune.data); greedy when nothing is predicted to win, or without a predictor."""


class Phase(enum.Enum):
    """Which pass over the requests a batch belongs to."""

    INITIAL = "initial"
    RECOMPUTE = "recompute"


class RecomputeMode(enum.Enum):
    """What FCR does with a request that did not finish within its batch's cap."""

    SCRATCH = "scratch"
    """Generate it again from its prompt with the full limit (the paper)."""
    CONTINUE = "continue"
    """Prefill its prompt plus the tokens already generated and continue with the remaining budget."""


@dataclass(frozen=True)
class ScheduleConfig:
    """Scheduling policy: strategy, limit, bins, batch sizes, token budget and safety margin."""

    strategy: Strategy = Strategy.FCR
    """vanilla, seqsch (sort only), vbs (sort + variable batch size) or fcr (+ failure collection and recompute)."""
    limit: int = 512
    """The most tokens any response may have (a request's own max_tokens can lower it)."""
    bin_width: int = 50
    """Width of a length bin in tokens; FCR caps a batch at its bin's upper edge."""
    batch_size: int = 16
    """Batch size of vanilla and seqsch, of VBS bins above the table, and of recompute batches."""
    vbs: dict[int, int] = field(default_factory=lambda: dict(PAPER_VBS))
    """Variable batch sizes: a batch capped at up to KEY tokens holds VALUE requests (larger caps: batch_size)."""
    token_budget: int | None = None
    """KV-cache tokens a batch may hold: rows x (longest prompt + max_new_tokens) stays within it (a single request
    may exceed it). Without prompt lengths (a bare length trace) a batch holds token_budget // max_new_tokens."""
    margin_tokens: int = 0
    """Added to every predicted length before binning (a safety margin against under-estimates)."""
    margin_ratio: float = 0.0
    """Predicted lengths are scaled by 1 + margin_ratio before binning (then margin_tokens is added)."""
    recompute: RecomputeMode = RecomputeMode.SCRATCH
    """FCR's second pass: scratch (the paper) or continue from the generated prefix."""
    policy: Admission = Admission.AUTO
    """Continuous batching (--engine.batching continuous, or vLLM): admission order fcfs, sjf (shortest predicted
    first), lpt (longest predicted first) or sjf-fcr (plus FCR caps and recompute); auto follows --strategy. Static
    batches ignore it."""
    kv_admission: KVAdmission = KVAdmission.GREEDY
    """Continuous batching with a bounded KV cache (vLLM, or our pool with --engine.kv_budget_tokens): greedy
    (vLLM's rule), reserve-max or predicted (see KVAdmission). On vLLM, reserve-max and predicted run seqsched's
    scheduler class (seqsched.engines.vllm_scheduler)."""

    def __post_init__(self) -> None:
        # YAML/JSON may spell the table's keys as strings; the policy works on integers.
        object.__setattr__(self, "vbs", {int(cap): int(size) for cap, size in self.vbs.items()})
        require(self.limit >= 1, "limit", f"must be >= 1, got {self.limit}")
        require(self.bin_width >= 1, "bin_width", f"must be >= 1, got {self.bin_width}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        bad = {cap: size for cap, size in self.vbs.items() if cap < 1 or size < 1}
        require(not bad, "vbs", f"entries must be positive (cap: batch size), got {bad}")
        budget = self.token_budget
        require(budget is None or budget >= 1, "token_budget", f"must be >= 1, got {budget}")
        require(self.margin_tokens >= 0, "margin_tokens", f"must be >= 0, got {self.margin_tokens}")
        require(self.margin_ratio >= 0, "margin_ratio", f"must be >= 0, got {self.margin_ratio}")

    def schedule(self) -> ScheduleConfig:
        """The scheduling part of a command's config (which extends this one)."""
        from dataclasses import fields

        return ScheduleConfig(**{item.name: getattr(self, item.name) for item in fields(ScheduleConfig)})

    @property
    def binned(self) -> bool:
        """True for the strategies that bin requests and use variable batch sizes."""
        return self.strategy in (Strategy.VBS, Strategy.FCR)

    @property
    def needs_predictions(self) -> bool:
        """Every strategy but vanilla orders requests by predicted length; so does every admission policy but
        FCFS (an explicit policy decides; auto follows the strategy)."""
        if self.kv_admission in (KVAdmission.PREDICTED, KVAdmission.AUTO):
            return True
        if self.policy is Admission.AUTO:
            return self.strategy is not Strategy.VANILLA
        return self.policy is not Admission.FCFS


@dataclass(frozen=True)
class Batch:
    """One batch of the plan: which requests (indices into the input) and how many tokens it may generate."""

    request_ids: tuple[int, ...]
    max_new_tokens: int
    """The cap: the longest response this batch can complete."""
    phase: Phase = Phase.INITIAL

    def __len__(self) -> int:
        return len(self.request_ids)


def adjusted_length(predicted: int, cfg: ScheduleConfig) -> int:
    """A predicted length with the safety margin applied (at least 1)."""
    scaled = math.ceil(predicted * (1.0 + cfg.margin_ratio)) if cfg.margin_ratio else predicted
    return max(1, scaled + cfg.margin_tokens)


def bin_cap(length: int, cfg: ScheduleConfig) -> int:
    """The upper edge of the bin holding length (a multiple of bin_width), never above the limit."""
    return min(cfg.limit, max(1, -(-length // cfg.bin_width)) * cfg.bin_width)


def batch_size_for(
    edge: int, cfg: ScheduleConfig, *, cap: int | None = None, variable: bool | None = None, prompt: int = 0
) -> int:
    """Requests per batch for a bin with upper edge `edge`: the VBS table (or the fixed size), then the token
    budget applied to rows of `prompt` tokens plus the batch's cap (default: the edge)."""
    variable = cfg.binned if variable is None else variable
    size = cfg.batch_size
    if variable:
        fitting = [key for key in cfg.vbs if edge <= key]
        if fitting:
            size = cfg.vbs[min(fitting)]
    if cfg.token_budget is not None:
        size = min(size, max(1, cfg.token_budget // (prompt + (edge if cap is None else cap))))
    return size


def request_bins(predicted: Sequence[int], own_limits: Sequence[int] | None, cfg: ScheduleConfig) -> list[int]:
    """Each request's bin edge: its margin-adjusted predicted length rounded up to the bin width, at most the
    bin of its own limit (own_limits None: every request has the global limit)."""
    # A lookup table over the predicted values runs in C over millions of requests (`seqsched plan`).
    largest = max(predicted, default=0)
    if largest <= _TABLE_MAX:
        table = [bin_cap(adjusted_length(value, cfg), cfg) for value in range(int(largest) + 1)]
        bins = list(map(table.__getitem__, predicted))
    else:
        bins = [bin_cap(adjusted_length(int(value), cfg), cfg) for value in predicted]
    if own_limits is not None and any(own != cfg.limit for own in own_limits):
        bins = [min(edge, bin_cap(own, cfg)) for edge, own in zip(bins, own_limits, strict=True)]
    return bins


_TABLE_MAX = 1 << 22
"""Predicted lengths up to this go through a lookup table in request_bins."""


def _own_limits(count: int, cfg: ScheduleConfig, limits: Sequence[int] | None) -> list[int]:
    if limits is None:
        return [cfg.limit] * count
    if len(limits) != count:
        raise ValueError(f"limits has {len(limits)} entries for {count} requests")
    return [max(1, min(cfg.limit, int(value))) for value in limits]


def _chunks(order: Sequence[int], size: int, cap_of: Sequence[int], phase: Phase) -> list[Batch]:
    batches = []
    for start in range(0, len(order), size):
        ids = tuple(order[start : start + size])
        batches.append(Batch(ids, max(cap_of[index] for index in ids), phase))
    return batches


def _close_batches(
    pool: Sequence[int], size: int, cap: int, prompts: Sequence[int], budget: int
) -> tuple[list[list[int]], list[int]]:
    """Walk pool in order, closing a batch when the next request would make it hold more than `size` rows or
    rows x (longest prompt + cap) > budget; returns the closed batches and the last, still open one."""
    closed: list[list[int]] = []
    current: list[int] = []
    widest = 0
    for index in pool:
        wider = max(widest, prompts[index])
        if current and (len(current) >= size or (len(current) + 1) * (wider + cap) > budget):
            closed.append(current)
            current, wider = [], prompts[index]
        current.append(index)
        widest = wider
    if current and (len(current) >= size or (len(current) + 1) * (widest + cap) > budget):
        closed.append(current)  # full already: nothing more can join it
        current = []
    return closed, current


def _budget_chunks(
    order: Sequence[int], size: int, cap_of: Sequence[int], prompts: Sequence[int], budget: int, cap: int
) -> list[Batch]:
    """Fixed-size chunks in order, each closed early when its KV tokens would exceed the budget (vanilla, seqsch)."""
    closed, last = _close_batches(order, size, cap, prompts, budget)
    groups = [*closed, last] if last else closed
    return [Batch(tuple(ids), max(cap_of[index] for index in ids), Phase.INITIAL) for ids in groups]


def _pack_bins(
    order: Sequence[int],
    bins: Sequence[int],
    own: Sequence[int],
    cfg: ScheduleConfig,
    phase: Phase,
    capped: bool,
    uniform_own: int | None = None,
    prompts: Sequence[int] | None = None,
) -> list[Batch]:
    """Walk the requests bin by bin (order sorted by bin); a bin's leftovers that do not fill a batch move on.

    uniform_own: every request's own limit when they all share one (skips a per-batch max over a million rows).
    prompts: each request's prompt tokens; with a token budget, a batch closes before rows x (longest prompt +
    cap) would exceed it (without them, the budget counts the cap alone and every bin has one batch size).
    """
    batches: list[Batch] = []
    pool: list[int] = []
    budget = cfg.token_budget if prompts is not None else None

    def emit(ids: tuple[int, ...], cap: int) -> None:
        top = uniform_own if uniform_own is not None else max(own[index] for index in ids)
        batches.append(Batch(ids, min(cap, top), phase))

    # order is sorted by bin: find each bin's slice by bisection instead of walking a million rows in Python.
    sorted_bins = list(map(bins.__getitem__, order))
    cap = cfg.limit
    low = 0
    while low < len(order):
        edge = sorted_bins[low]
        high = bisect.bisect_right(sorted_bins, edge, lo=low)
        pool.extend(order[low:high])
        low = high
        cap = edge if capped else cfg.limit
        if budget is not None and prompts is not None:
            # The open batch carried over from the bin below is walked again: a larger cap may split it.
            closed, pool = _close_batches(pool, batch_size_for(edge, cfg, cap=cap), cap, prompts, budget)
            for ids in closed:
                emit(tuple(ids), cap)
            continue
        size = batch_size_for(edge, cfg, cap=cap)
        full = len(pool) - len(pool) % size
        for start in range(0, full, size):
            emit(tuple(pool[start : start + size]), cap)
        del pool[:full]
    if pool:
        emit(tuple(pool), cap)
    return batches


def _check_prompts(count: int, prompts: Sequence[int] | None) -> Sequence[int] | None:
    if prompts is not None and len(prompts) != count:
        raise ValueError(f"prompts has {len(prompts)} entries for {count} requests")
    return prompts


def plan(
    predicted: Sequence[int],
    cfg: ScheduleConfig,
    limits: Sequence[int] | None = None,
    prompts: Sequence[int] | None = None,
) -> list[Batch]:
    """The initial batches: every request (an index into predicted) exactly once.

    limits are the requests' own caps (OpenAI max_tokens), each lowered to cfg.limit; a batch's
    max_new_tokens never exceeds the largest own cap in it (the runner cuts each row at its own).
    prompts are the requests' prompt tokens: with cfg.token_budget, no batch of more than one request holds more
    than the budget's KV tokens, rows x (longest prompt + max_new_tokens).
    """
    count = len(predicted)
    own = _own_limits(count, cfg, limits)
    prompts = _check_prompts(count, prompts)
    budget = cfg.token_budget if prompts is not None else None
    if cfg.strategy in (Strategy.VANILLA, Strategy.SEQSCH):
        order: Sequence[int] = range(count)
        if cfg.strategy is Strategy.SEQSCH:
            order = sorted(range(count), key=predicted.__getitem__)
        if budget is not None and prompts is not None:
            return _budget_chunks(order, cfg.batch_size, own, prompts, budget, cfg.limit)
        return _chunks(order, batch_size_for(cfg.limit, cfg, variable=False), own, Phase.INITIAL)
    uniform = limits is None or all(value == cfg.limit for value in own)
    bins = request_bins(predicted, None if uniform else own, cfg)
    if uniform:  # bins grow with the predicted length, so sorting by it sorts by bin too (stable: ties in input order)
        order = sorted(range(count), key=predicted.__getitem__)
    else:
        spread = max(predicted, default=0) + 1
        keys = [edge * spread + value for edge, value in zip(bins, predicted, strict=True)]
        order = sorted(range(count), key=keys.__getitem__)
    capped = cfg.strategy is Strategy.FCR
    return _pack_bins(
        order,
        bins,
        own,
        cfg,
        Phase.INITIAL,
        capped=capped,
        uniform_own=cfg.limit if uniform else None,
        prompts=prompts,
    )


def recompute_plan(
    failed: Sequence[int],
    cfg: ScheduleConfig,
    remaining: Mapping[int, int] | None = None,
    *,
    failed_caps: Mapping[int, int] | None = None,
    predicted: Mapping[int, int] | Sequence[int] | None = None,
    prompts: Mapping[int, int] | Sequence[int] | None = None,
) -> list[Batch]:
    """Batches for the requests that hit their cap, each capped at what it may still generate.

    remaining maps a failed request to the tokens it may still generate (default: cfg.limit, a recompute
    from scratch); requests are grouped by that budget into bins, so every batch's cap covers all its rows.
    Within a bin they go by the cap they failed at, then by predicted length (failed_caps, predicted): a request
    that outran a 200-token cap is longer than one that outran 50, so like goes with like and a batch pads less
    than one mixing them in input order. prompts (what each is fed, prefix included) apply the token budget.
    """
    if not failed:
        return []
    ids = list(dict.fromkeys(failed))
    if len(ids) != len(failed):
        raise ValueError("a request can fail only once")
    size = max(ids) + 1
    own = [0] * size
    for index in ids:
        own[index] = cfg.limit if remaining is None else max(1, min(cfg.limit, remaining.get(index, cfg.limit)))
    bins = [bin_cap(value, cfg) if value else 0 for value in own]
    caps = [failed_caps.get(index, 0) for index in ids] if failed_caps else [0] * len(ids)
    guesses = [max(0, int(predicted[index])) for index in ids] if predicted is not None else [0] * len(ids)
    top_cap, top_guess = max(caps) + 1, max(guesses) + 1
    # Sort by budget bin, failed cap, predicted length, then index, as one integer key.
    keys = [
        ((bins[index] * top_cap + cap) * top_guess + guess) * size + index
        for index, cap, guess in zip(ids, caps, guesses, strict=True)
    ]
    order = [ids[position] for position in sorted(range(len(ids)), key=keys.__getitem__)]
    widths: list[int] | None = None
    if prompts is not None and cfg.token_budget is not None:
        widths = [0] * size
        for index in ids:
            widths[index] = int(prompts[index])
    uniform = all(value == cfg.limit for value in (own[index] for index in ids))
    return _pack_bins(
        order,
        bins,
        own,
        cfg,
        Phase.RECOMPUTE,
        capped=True,
        uniform_own=cfg.limit if uniform else None,
        prompts=widths,
    )


def request_cap(cap: int, budget: int) -> int:
    """The FCR cap rule, one for every engine: what a request may generate in a pass capped at `cap` when it
    may generate `budget` tokens in all. One token past the cap when its budget goes on, so that a response of
    exactly the cap's length can emit its stop token and finish instead of being recomputed; its budget when
    that is smaller. A row that uses all cap + 1 tokens without stopping has failed its cap."""
    return min(budget, cap + 1)


def engine_steps(cap: int, budgets: Iterable[int]) -> int:
    """Decode steps of a static batch capped at `cap` whose rows may generate `budgets`: the largest
    request_cap among its rows (the cap itself when every budget is at or under it)."""
    return max(cap, max((request_cap(cap, budget) for budget in budgets), default=cap))


def failed_requests(batches: Sequence[Batch], true_lengths: Sequence[int], limits: Sequence[int]) -> list[int]:
    """The requests whose true length, cut at their own limit, exceeds their batch's cap (in plan order)."""
    failed: list[int] = []
    for batch in batches:
        cap = batch.max_new_tokens
        failed.extend(index for index in batch.request_ids if true_lengths[index] > cap and limits[index] > cap)
    return failed
