"""How many rows a continuous HF engine decodes at once, chosen from the step cost measured on this machine.

The rule: a decode step of B rows at a running row's mean context costs step_s(B, context) (any cost model of
serving.policy.stepcost: the measured grid or the linear fit), so the engine advances B / step_s rows per second. The
pool is the smallest B reaching SLOT_SHARE (80%) of the best rows/s over B up to MAX_SLOTS, at most the number of
requests. With a linear cost, fixed_s + B * per_row, that is B = share / (1 - share) * fixed_s / per_row. Past
it, more slots buy little throughput but delay the requests a policy would admit first (and cost memory); below
it, the step's fixed cost dominates. The context is a running row's mean: its prompt plus half of a response of
limit / 2 tokens, with no predictor involved, so every admission policy runs with the same pool.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

from seqsched.engines.api import Batching, Engine
from seqsched.engines.config import EngineConfig, EngineKind
from seqsched.model_specs import ModelConfig
from seqsched.requests import Request
from serving.policy.stepcost import CostModel, StepCost

SLOT_SHARE = 0.8
"""The share of the most rows/s per decode step that the chosen pool reaches."""


def mean_context(prompt_tokens: float, limit: int) -> float:
    """A running row's mean context without predictions: its prompt plus half of a limit / 2 response."""
    return prompt_tokens + limit / 4


MAX_SLOTS = 256
"""The largest pool considered (the step-cost grid's largest batch)."""


def choose_slots(cost: CostModel, context: float, share: float = SLOT_SHARE, most: int | None = None) -> int:
    """The smallest pool whose rows/s per decode step reaches `share` of the best (see the module docstring)."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    rate = {size: size / cost.step_s(size, context) for size in range(1, MAX_SLOTS + 1)}
    best = max(rate.values())
    slots = next(size for size in range(1, MAX_SLOTS + 1) if rate[size] >= share * best)
    return min(slots, most) if most else slots


def measure_cost(engine: Engine) -> StepCost:
    """The engine's step cost, fitted to a short probe (static batches of 1 to 64 rows, 12 steps, two prompt
    lengths; about a minute for SmolLM2 on one CPU thread)."""
    from serving.measure.costmodel import fit, measure

    return fit(measure(engine, batch_sizes=(1, 4, 16, 32, 64), prompt_lengths=(32, 160), steps=12))


def slots_for(
    engine: Engine, requests: Sequence[Request], limit: int, cost: CostModel | None = None
) -> tuple[int, dict[str, Any]]:
    """The pool for serving `requests` on this engine (the step cost is measured unless given) and how it was
    chosen."""
    cost = cost or measure_cost(engine)
    sample = requests[:64]
    prompt_tokens = statistics.mean(len(engine.encode(request.chat())) for request in sample) if sample else 0.0
    context = mean_context(prompt_tokens, limit)
    slots = choose_slots(cost, context, most=len(requests) or None)
    info = {
        "slots": slots,
        "rule": f"smallest pool reaching {SLOT_SHARE:.0%} of the most rows/s per decode step (serving.measure.slots)",
        "mean_context": context,
        "step_cost": asdict(cost) if is_dataclass(cost) else repr(cost),
        "step_s_at_slots": cost.step_s(slots, context),
    }
    return slots, info


def serving_engine(config: EngineConfig, model: ModelConfig, requests: Sequence[Request], limit: int) -> Engine:
    """The engine a command asked for (a length replay for these requests with --engine.replay); a continuous HF
    engine without --engine.slots gets its pool from the step cost measured here first (printed)."""
    from dataclasses import replace

    from seqsched.engines.selection import build_engine, with_batching

    config = config.resolved(random_init=model.random_init is not None)
    if config.kind is EngineKind.HF and config.batching is Batching.CONTINUOUS and config.slots is None:
        static = build_engine(replace(config, batching=Batching.STATIC), model, requests)
        slots, info = slots_for(static, requests, limit)
        print(f"continuous engine: {slots} slots ({info['rule']}; mean context {info['mean_context']:.0f} tokens)")
        return with_batching(static, Batching.CONTINUOUS, slots, config.admit_min, config.kv_budget_tokens)
    return build_engine(config, model, requests)


__all__ = ["SLOT_SHARE", "choose_slots", "mean_context", "measure_cost", "serving_engine", "slots_for"]
