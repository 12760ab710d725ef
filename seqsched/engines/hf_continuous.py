"""Continuous batching over a Hugging Face causal LM (CPU or GPU): a pool of `slots` rows decoded together. A row
stops generating at its stop token or cap; once `admit_min` slots are free, waiting requests take them (lowest priority
value first, ties in arrival order) after one batched prefill of the newcomers.

KV layout: left-padding alignment on a DynamicCache of seqsched.engines.kv_cache's SlackLayers (each step writes
one column in place; transformers' own layer copied the whole cache at every step). Every row's tokens end at the
cache's last column. The newcomers' prefilled cache is padded on the left to the pool's width (or the pool's to
theirs) and joined along the batch in one copy; the attention mask hides the padding and positions are per row, so a
row's keys carry the same rotary positions as in a batch of its own and greedy outputs equal a one-request run.
Finished rows (and rows preempted under a KV budget) leave in groups, because each removal copies the cache: at the
next admission, or once admit_min of them have retired or they outnumber a quarter of the live rows; until then they
are computed and ignored. When rows leave, the leading columns no remaining row uses are cut (a view, no copy), so
the width follows the longest running context rather than the longest the pool has seen. What the layout costs:
each forward attends over rows x width instead of each row's own context (SubmitStats.padded_context_tokens vs
context_tokens). A paged layout would not pay it: transformers' own paged `generate_batch` (sdpa) runs about as fast
on this CPU once its cache is sized to the workload (benchmarks/continuous_engine.py), but it draws every sample from
one generator (no per-request seeds, so no reproducible labels) and admits first in, first out; this pool keeps the
static engine's sampling and order.
"""

from __future__ import annotations

import functools
import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from seqsched.engines.api import (
    GREEDY,
    Batching,
    BatchOutput,
    FinishReason,
    Message,
    RowOutput,
    SamplingParams,
    SubmitStats,
    TimedRow,
)
from seqsched.engines.config import EngineConfig
from seqsched.engines.hf import HFEngine
from seqsched.engines.kv_cache import DEFAULT_RESERVE, join_left_padded, slack_cache, trim_front
from seqsched.engines.pool_rules import admits, compacts, default_admit_min, reservations_fit
from seqsched.engines.timing import cache_copy_seconds
from seqsched.errors import SeqschedError
from seqsched.model_specs import ModelConfig


@dataclass
class _Row:
    """A running request."""

    index: int
    """Its position in the submitted set."""
    cap: int
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)


COPY_PROBE = (16, 256)
"""Rows and columns of the cache buffer whose copy HFContinuousEngine.copy_slot_s times."""


class _Pool:
    """Rows in the cache and their joint state, all in cache order: KV cache, attention mask (1 = real token), each
    row's next position and the token it feeds next (sampled, not yet in the cache). A row that finished (or was
    preempted) stays in the cache as a retired row (computed, its tokens ignored) until the next compaction:
    removing a row copies the whole cache, so rows leave in groups (at the next admission, once `admit_min` have
    retired, or once the retired outnumber a quarter of the live rows)."""

    def __init__(
        self,
        rows: list[_Row],
        cache: DynamicCache | None = None,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        pending: torch.Tensor | None = None,
    ) -> None:
        self.rows = rows
        self.alive = [True] * len(rows)
        self.cache = cache
        self.mask = mask
        self.positions = positions
        self.pending = pending

    def __len__(self) -> int:
        """Rows in the cache, retired ones included."""
        return len(self.rows)

    @property
    def live(self) -> int:
        """Rows still generating."""
        return sum(self.alive)

    @property
    def width(self) -> int:
        """Cache columns (the longest running context plus alignment padding)."""
        return 0 if self.mask is None else int(self.mask.shape[1])

    def live_slots(self) -> list[int]:
        """Cache positions of the rows still generating, in cache order."""
        return [slot for slot, alive in enumerate(self.alive) if alive]

    def retire(self, slots: Sequence[int], going: Sequence[bool]) -> None:
        """Mark the rows at these cache positions that did not go on as retired."""
        for slot, keep in zip(slots, going, strict=True):
            if not keep:
                self.alive[slot] = False

    def compact(self) -> None:
        """Drop the retired rows, then cut leading columns that no remaining row uses."""
        self.keep(self.alive)

    def keep(self, kept: Sequence[bool]) -> None:
        """Drop the rows not kept; then cut leading columns that no remaining row uses."""
        if all(kept):
            return
        if not any(kept):
            self.rows, self.alive = [], []
            self.cache, self.mask, self.positions, self.pending = None, None, None, None
            return
        assert self.cache is not None and self.mask is not None
        assert self.positions is not None and self.pending is not None
        index = torch.tensor([slot for slot, keep in enumerate(kept) if keep], device=self.mask.device)
        self.rows = [row for row, keep in zip(self.rows, kept, strict=True) if keep]
        self.alive = [alive for alive, keep in zip(self.alive, kept, strict=True) if keep]
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.positions = self.positions[index]
        self.pending = self.pending[index]
        unused = int(self.mask.any(dim=0).int().argmax())  # the first column some row uses
        if unused:
            trim_front(self.cache, unused)
            self.mask = self.mask[:, unused:]

    def join(self, other: _Pool, reserve: int) -> None:
        """Add other's rows after these, both left-padded to the wider cache (one copy into a buffer with
        `reserve` spare columns)."""
        if not other.rows:
            return
        if not self.rows:
            self.rows, self.alive, self.cache, self.mask = other.rows, other.alive, other.cache, other.mask
            self.positions, self.pending = other.positions, other.pending
            return
        assert self.cache is not None and other.cache is not None
        assert self.mask is not None and other.mask is not None
        width = max(self.width, other.width)
        mine, theirs = width - self.width, width - other.width
        join_left_padded(self.cache, other.cache, reserve)
        self.mask = torch.cat([F.pad(self.mask, (mine, 0)), F.pad(other.mask, (theirs, 0))], dim=0)
        self.positions = torch.cat([self.positions, other.positions])  # type: ignore[list-item]
        self.pending = torch.cat([self.pending, other.pending])  # type: ignore[list-item]
        self.rows = self.rows + other.rows
        self.alive = self.alive + other.alive


class HFContinuousEngine:
    """Continuous batching with a pool of `slots` rows over an HFEngine's model; `generate` runs a static batch."""

    batching = Batching.CONTINUOUS
    engine_kind = "hf"

    def __init__(
        self, static: HFEngine, slots: int, admit_min: int | None = None, kv_budget_tokens: int | None = None
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if kv_budget_tokens is not None and kv_budget_tokens < 2:
            raise ValueError(f"kv_budget_tokens must be >= 2, got {kv_budget_tokens}")
        self.kv_budget_tokens = kv_budget_tokens
        """KV tokens the running requests may hold (prompt + generated, as a paged cache counts them; None: no bound).
        Admission keeps within it (each request's reservation, see submit); a step that would exceed it preempts the
        lowest-priority running request, which starts again from its prompt later (greedy: the same output)."""
        if admit_min is not None and admit_min < 1:
            raise ValueError(f"admit_min must be >= 1, got {admit_min}")
        self.static = static
        self.slots = slots
        self.admit_min = default_admit_min(slots) if admit_min is None else min(admit_min, slots)
        """Waiting requests are admitted once this many slots are free (or fewer are waiting, or none runs); as many
        finished rows are kept in the cache (retired) before they are dropped in one copy."""
        self.reserve = DEFAULT_RESERVE
        """Spare cache columns allocated at each admission (the cache grows by doubling beyond them)."""
        self.model = static.model
        self.tokenizer = static.tokenizer
        self.last_stats: SubmitStats | None = None
        layers = DynamicCache(config=self.model.config).layers
        if any(type(layer) is not DynamicLayer for layer in layers):
            kinds = sorted({type(layer).__name__ for layer in layers})
            raise SeqschedError(
                f"continuous batching on the HF engine needs full-attention cache layers; this model has {kinds} "
                "(use --engine.batching static)"
            )

    @classmethod
    def from_spec(cls, model: ModelConfig | str, config: EngineConfig) -> HFContinuousEngine:
        """Load a model spec with `config.slots` rows (which must be set)."""
        if config.slots is None:
            raise SeqschedError("--engine.slots is required to build a continuous HF engine here")
        return cls(HFEngine.from_spec(model, config), config.slots, config.admit_min, config.kv_budget_tokens)

    @functools.cached_property
    def copy_slot_s(self) -> float:
        """Seconds per row and column of a cache buffer the pool copies into (at each join and compaction), measured
        once on a buffer of COPY_PROBE rows x columns of this model (a memory-bound copy: linear in its size)."""
        rows, columns = COPY_PROBE
        seconds = cache_copy_seconds(self.model.config, rows, columns, dtype=self.model.dtype)
        return seconds / ((rows - 1) * columns)

    @property
    def takes_reservations(self) -> bool:
        """True when the pool has a KV budget (submit then takes each request's reservation)."""
        return self.kv_budget_tokens is not None

    def encode(self, prompt: str | Sequence[Message]) -> list[int]:
        """Token ids of a prompt with the chat template applied (generation prompt added)."""
        return self.static.encode(prompt)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of generated token ids, special tokens dropped."""
        return self.static.decode(token_ids)

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingParams = GREEDY,
        seeds: Sequence[int] | None = None,
    ) -> BatchOutput:
        """One static batch (the step-cost probe and the label sampler use it), on the same model."""
        return self.static.generate(prompt_ids, max_new_tokens, sampling, seeds)

    @torch.inference_mode()
    def submit(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_tokens: Sequence[int],
        priorities: Sequence[int] | None = None,
        sampling: SamplingParams = GREEDY,
        seeds: Sequence[int] | None = None,
        on_finished: Callable[[int, TimedRow], None] | None = None,
        reserves: Sequence[int] | None = None,
        hold_reservations: bool = False,
    ) -> list[TimedRow]:
        """Serve every request through the pool (lower priority value first, ties in input order); outputs in
        input order, each with the seconds from this call until it finished. on_finished(index, row) is called as
        each request finishes. With a KV budget, reserves: the generated tokens each request reserves room for
        (None: admitted when its prompt fits, the greedy rule; hold_reservations: held whole to the end);
        requests start in order while they fit (see _Budget)."""
        count = len(prompt_ids)
        if len(max_tokens) != count or (priorities is not None and len(priorities) != count):
            raise ValueError("prompt_ids, max_tokens and priorities must have one entry per request")
        if reserves is not None and (self.kv_budget_tokens is None or len(reserves) != count):
            raise ValueError("reserves need a KV budget (kv_budget_tokens) and one entry per request")
        if seeds is not None and len(seeds) != count:
            raise ValueError("seeds must have one entry per request")
        if any(cap < 1 for cap in max_tokens):
            raise ValueError("every max_tokens must be >= 1")
        if any(not ids for ids in prompt_ids):
            raise ValueError("every prompt needs at least one token")
        started = time.perf_counter()
        rank = [(0 if priorities is None else int(priorities[index]), index) for index in range(count)]
        waiting = sorted(rank)  # a heap of (priority, index): preempted requests go back in their place
        run = _Submission(self, prompt_ids, max_tokens, sampling, seeds, started, on_finished)
        pool = _Pool([])
        budget = _Budget(self.kv_budget_tokens, prompt_ids, reserves, hold_reservations)
        while waiting or pool:
            # Newcomers share one prefill: a prefill call has a fixed cost, so wait for admit_min free slots.
            ready = admits(pool.live, self.slots, len(waiting), self.admit_min)
            if ready and waiting and pool.live < self.slots:
                newcomers = budget.admit(waiting, pool, self.slots - pool.live)
                if newcomers:
                    pool.compact()
                    pool.join(run.prefill(newcomers), self.reserve)
            if pool:
                budget.preempt_to_fit(pool, waiting, rank, run.stats)
            if pool:
                run.decode(pool)
        self.last_stats = run.stats
        missing = [index for index in range(count) if index not in run.finished]
        assert not missing, f"requests {missing[:5]} never finished"
        return [run.finished[index] for index in range(count)]


class _Budget:
    """The pool's KV budget during one submit(): which waiting requests may start, and which running one leaves
    when the next step would not fit (no budget: every request fits). Without reservations a request starts when its
    prompt fits what the running rows use (greedy); with them, when the running requests and it, each growing to its
    reservation and then leaving, never need more than the budget at once (seqsched.engines.pool_rules), or, held,
    when every reservation fits whole."""

    def __init__(
        self,
        tokens: int | None,
        prompt_ids: Sequence[Sequence[int]],
        reserves: Sequence[int] | None,
        hold: bool = False,
    ) -> None:
        self.tokens = tokens
        self.prompts = [len(ids) for ids in prompt_ids]
        self.reserves = reserves
        self.hold = hold

    def _reserve(self, index: int) -> int:
        assert self.reserves is not None
        return int(self.reserves[index])

    def _expected(self, index: int, generated: int) -> tuple[int, int]:
        prompt = self.prompts[index]
        return prompt + generated, max(1, self._reserve(index) - generated)

    def _held(self, index: int, generated: int) -> int:
        return max(self.prompts[index] + generated + 1, self.prompts[index] + self._reserve(index))

    def admit(self, waiting: list[tuple[int, int]], pool: _Pool, free_slots: int) -> list[int]:
        """Pop the waiting requests that start now, in order, while they fit (all of them without a budget)."""
        if self.tokens is None:
            return [heapq.heappop(waiting)[1] for _ in range(min(free_slots, len(waiting)))]
        live = [pool.rows[slot] for slot in pool.live_slots()]
        free = self.tokens - sum(self.prompts[row.index] + len(row.tokens) + 1 for row in live)
        held = sum(self._held(row.index, len(row.tokens)) for row in live) if self.reserves and self.hold else 0
        expected = [self._expected(row.index, len(row.tokens)) for row in live] if self.reserves else []
        chosen: list[int] = []
        while waiting and len(chosen) < free_slots:
            index = waiting[0][1]
            running = len(live) + len(chosen)
            if self.reserves is None:
                # After its prefill it holds its prompt, its first token and the next: prompt + 2 at the next step.
                fits = self.prompts[index] + 2 <= free
            elif self.hold:
                fits = held + self._held(index, 1) <= self.tokens
            else:
                # Its prefill samples its first token before the running rows take their next step: one ahead.
                fits = reservations_fit([*expected, self._expected(index, 1)], self.tokens)
            if not (fits or running == 0):
                break
            heapq.heappop(waiting)
            chosen.append(index)
            free -= self.prompts[index] + 2
            if self.reserves is not None:
                held += self._held(index, 1) if self.hold else 0
                expected.append(self._expected(index, 1))
        return chosen

    def preempt_to_fit(
        self, pool: _Pool, waiting: list[tuple[int, int]], rank: list[tuple[int, int]], stats: SubmitStats
    ) -> None:
        """Before a decode step: while the live rows' contexts plus one token each exceed the budget, the running
        request of the lowest priority (latest on ties) leaves the pool and waits again (its work is recomputed).
        Its row stays in the cache as a retired one until the pool compacts: dropping it at once would copy the
        whole cache for every victim."""
        if self.tokens is None:
            return
        while pool.live > 1:
            live = pool.live_slots()
            used = sum(self.prompts[pool.rows[slot].index] + len(pool.rows[slot].tokens) + 1 for slot in live)
            if used <= self.tokens:
                return
            victim = max(live, key=lambda slot: rank[pool.rows[slot].index])
            row = pool.rows[victim]
            stats.preemptions += 1
            stats.recomputed_tokens += self.prompts[row.index] + len(row.tokens)
            pool.retire([victim], [False])
            heapq.heappush(waiting, rank[row.index])


class _Submission:
    """One submit() call's state: the requests, what finished, and the counters."""

    def __init__(
        self,
        engine: HFContinuousEngine,
        prompt_ids: Sequence[Sequence[int]],
        max_tokens: Sequence[int],
        sampling: SamplingParams,
        seeds: Sequence[int] | None,
        started: float,
        on_finished: Callable[[int, TimedRow], None] | None = None,
    ) -> None:
        self.engine = engine
        self.on_finished = on_finished
        self.static = engine.static
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.seeded = seeds is not None and not sampling.greedy
        self.seeds = seeds
        self.started = started
        self.finished: dict[int, TimedRow] = {}
        self.stats = SubmitStats()

    def _generators(self, rows: Sequence[_Row]) -> list[torch.Generator] | None:
        return [row.generator for row in rows] if self.seeded else None  # type: ignore[misc]

    def _take(self, rows: Sequence[_Row], tokens: list[int]) -> list[bool]:
        """Append each row's new token or finish it; True for the rows that go on."""
        stops = self.static.stop_token_ids
        going = []
        for row, token in zip(rows, tokens, strict=True):
            if token in stops:
                self._finish(row, FinishReason.STOP, len(row.tokens) + 1)
                going.append(False)
                continue
            row.tokens.append(token)
            if len(row.tokens) >= row.cap:
                self._finish(row, FinishReason.LENGTH, len(row.tokens))
                going.append(False)
            else:
                going.append(True)
        return going

    def _finish(self, row: _Row, reason: FinishReason, step: int) -> None:
        text = self.static.decode(row.tokens)
        output = RowOutput(token_ids=row.tokens, text=text, finish_reason=reason, finish_step=step)
        timed = TimedRow(output, time.perf_counter() - self.started)
        self.finished[row.index] = timed
        if self.on_finished is not None:
            self.on_finished(row.index, timed)

    def prefill(self, indices: list[int]) -> _Pool:
        """Prefill newcomers in one left-padded batch and sample their first tokens; the pool of those that go on."""
        began = time.perf_counter()
        model = self.engine.model
        generators = None
        if self.seeded:
            assert self.seeds is not None
            generators = [torch.Generator().manual_seed(int(self.seeds[index])) for index in indices]
        rows = [
            _Row(index, int(self.max_tokens[index]), None if generators is None else generators[slot])
            for slot, index in enumerate(indices)
        ]
        input_ids, mask = self.static.left_pad([self.prompt_ids[index] for index in indices])
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = slack_cache(model.config, self.engine.reserve)
        forward = time.perf_counter()
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.static.cache_argument: cache},
        )
        self.stats.forward_s += time.perf_counter() - forward
        tokens = self.static.next_tokens(out.logits[:, -1, :], self.sampling, generators)
        pool = _Pool(rows, cache, mask, positions[:, -1] + 1, tokens)
        pool.keep(self._take(rows, tokens.tolist()))
        self.stats.prefills += 1
        self.stats.prefill_s += time.perf_counter() - began
        return pool

    def decode(self, pool: _Pool) -> None:
        """One forward over the pool: every row feeds its pending token and samples the next."""
        began = time.perf_counter()
        assert pool.mask is not None and pool.pending is not None and pool.positions is not None
        ones = torch.ones((len(pool), 1), dtype=pool.mask.dtype, device=pool.mask.device)
        pool.mask = torch.cat([pool.mask, ones], dim=-1)
        forward = time.perf_counter()
        out = self.engine.model(
            input_ids=pool.pending.unsqueeze(-1),
            attention_mask=pool.mask,
            position_ids=pool.positions.unsqueeze(-1),
            use_cache=True,
            **{self.static.cache_argument: pool.cache},
        )
        self.stats.forward_s += time.perf_counter() - forward
        pool.positions = pool.positions + 1
        tokens = self.static.next_tokens(out.logits[:, -1, :], self.sampling, self._generators(pool.rows))
        stats = self.stats
        stats.steps += 1
        stats.row_steps += len(pool)
        stats.retired_row_steps += len(pool) - pool.live
        stats.max_rows = max(stats.max_rows, len(pool))
        stats.context_tokens += int(pool.mask.sum())
        stats.padded_context_tokens += pool.mask.numel()
        token_list = tokens.tolist()
        live = pool.live_slots()
        pool.retire(live, self._take([pool.rows[slot] for slot in live], [token_list[slot] for slot in live]))
        pool.pending = tokens
        if compacts(pool.live, len(pool) - pool.live, self.engine.admit_min):
            pool.compact()
        stats.decode_s += time.perf_counter() - began
