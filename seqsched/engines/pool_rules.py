"""The continuous pool's rules, pure (no torch), shared by the engine (seqsched.engines.hf_continuous) and its
simulators (serving.policy.simulate_continuous, serving.policy.simulate_kv) so that they cannot drift apart: when
waiting requests are admitted, when finished rows are dropped from the cache, and, with a KV budget, what each
request holds."""

from __future__ import annotations


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


def kv_need(prompt: int, reserve: int | None) -> int:
    """KV tokens a waiting request needs free to be admitted: its prompt and first token, or (with a reservation)
    its prompt plus the generated tokens reserved for it."""
    return prompt + 1 if reserve is None else prompt + max(1, reserve)


def kv_held(context: int, prompt: int, reserve: int | None) -> int:
    """KV tokens a running request holds room for: its context and next token, or its reservation while larger."""
    return context + 1 if reserve is None else max(context + 1, prompt + max(1, reserve))


def kv_admits(need: int, free: int, running: int) -> bool:
    """True when a waiting request with this need may start: it fits the free KV, or nothing runs (alone it starts
    whatever it needs, else it would wait forever)."""
    return need <= free or running == 0


__all__ = ["admits", "compacts", "default_admit_min", "kv_admits", "kv_held", "kv_need"]
