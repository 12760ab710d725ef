"""The continuous pool's rules, pure (no torch), shared by the engine (seqsched.engines.hf_continuous) and its
simulators (serving.policy.simulate_continuous, serving.policy.simulate_kv) so that they cannot drift apart: when
waiting requests are admitted, when finished rows are dropped from the cache, and, with a KV budget, what each
request holds."""

from __future__ import annotations

import math
from collections.abc import Sequence

DEFAULT_RESERVE = 64
"""Spare cache columns allocated beyond the filled ones when nothing better is known (the pool's buffer gets them at
each join; seqsched.engines.kv_cache)."""


def default_admit_min(slots: int) -> int:
    """Admit once an eighth of the pool is free (at least one slot): on a CPU a prefill call costs a fixed ~50 ms
    or more beside its tokens, and admitting as soon as one slot freed made prefills over a third of a refill run
    here; waiting for slots/8 leaves fewer than that idle while requests wait (serving.policy.simulate_continuous models
    both)."""
    return max(1, slots // 8)


def admits(live: int, slots: int, waiting: int, admit_min: int) -> bool:
    """True when waiting requests may take free slots now: none is running, or admit_min slots are free (fewer
    when fewer are waiting), so that newcomers share one prefill."""
    return not live or slots - live >= min(admit_min, waiting)


def compacts(live: int, retired: int, admit_min: int) -> bool:
    """True when the pool drops its retired rows after a decode step: none is live, admit_min have retired, or the
    retired outnumber a quarter of the live rows (removing rows copies the whole cache, so they leave in groups; an
    admission compacts too)."""
    return not live or retired >= admit_min or 4 * retired > live


def peak_blocks(requests: Sequence[tuple[int, int]], block: int = 1) -> int:
    """The most KV blocks these requests hold at once from now on if each generates exactly its expected remaining
    tokens: (context now, tokens still to come) each; k steps from now a request holds ceil((context + k + 1) / block)
    blocks until it finishes, then none. The peak is right before one of them finishes (O(n^2): callers try the
    sum of final sizes first, an upper bound)."""
    if not requests:
        return 0
    best = 0
    for step in sorted({max(0, remaining - 1) for _, remaining in requests}):
        total = sum(math.ceil((context + step + 1) / block) for context, remaining in requests if remaining > step)
        best = max(best, total)
    return best


def reservations_fit(requests: Sequence[tuple[int, int]], capacity: int, block: int = 1, held: int = 0) -> bool:
    """True when requests with these (context, tokens still to come) never need more than `capacity` blocks at once
    beside `held` blocks that stay taken (reservations held whole until their request finishes): their final sizes
    summed is the quick answer, the peak over time the exact one (the short ones leave before the long ones grow)."""
    final = sum(math.ceil((context + remaining) / block) for context, remaining in requests)
    return held + final <= capacity or held + peak_blocks(requests, block) <= capacity


__all__ = [
    "admits",
    "compacts",
    "default_admit_min",
    "peak_blocks",
    "reservations_fit",
]
