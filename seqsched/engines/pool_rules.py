"""The continuous pool's two rules, pure (no torch), shared by the engine (seqsched.engines.hf_continuous) and its
simulator (serving.simulate_continuous) so that the two cannot drift apart: when waiting requests are admitted, and
when finished rows are dropped from the cache."""

from __future__ import annotations


def default_admit_min(slots: int) -> int:
    """Admit once an eighth of the pool is free (at least one slot): on a CPU a prefill call costs a fixed ~50 ms
    or more beside its tokens, and admitting as soon as one slot freed made prefills over a third of a refill run
    here; waiting for slots/8 leaves fewer than that idle while requests wait (serving.simulate_continuous models
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


__all__ = ["admits", "compacts", "default_admit_min"]
