"""Choose the KV admission rule and the order for the workload served (pure, no torch), by simulation
(serving.policy.simulate_kv) on the served prompts and predictions with true lengths drawn from the predictor's held-out
errors, as serving.policy.workload chooses static batches.

Candidates: greedy (vLLM's rule) in arrival order — the baseline, served when nothing is predicted to beat it —
reserve-max, and predicted admission at each margin, in fcfs, sjf and lpt order. A candidate that reads predictions
pays the predictor's time (it runs before the first request starts). Every candidate must be predicted
no slower and no later on mean than the baseline (never worse than FCFS); among those the objective decides:
`throughput` (the shortest run) or `latency` (the lowest mean completion time); a winner that does not beat the
baseline by `min_gain` on the objective is not worth the risk, and the baseline serves.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from seqsched.errors import require
from serving.policy.admission import reservations
from serving.policy.scheduler import Admission, KVAdmission, ScheduleConfig, adjusted_length
from serving.policy.simulate_kv import KVEngine, simulate_kv
from serving.policy.stepcost import CostModel
from serving.policy.workload import ErrorModel, Objective, TuneConfig


@dataclass(frozen=True)
class KVTuneConfig:
    """The KV tuner's search."""

    objective: Objective = Objective.THROUGHPUT
    margins: tuple[float, ...] = (0.0, 0.15, 0.3, 0.6)
    """margin_ratio values tried for predicted admission (the reservation is the prediction x (1 + margin))."""
    orders: tuple[Admission, ...] = (Admission.FCFS, Admission.SJF, Admission.LPT)
    draws: int = 2
    """Draws of true lengths from the held-out errors; each candidate's figures are the mean over them."""
    seed: int = 0
    min_gain: float = 0.03
    """The winner must beat the baseline by this share on the objective (else the baseline serves)."""
    reservations: bool = True
    """Try reserve-max and predicted admission (an engine that admits by KV reservations: seqsched's vLLM scheduler
    class, our pool with a KV budget); False: greedy admission in each order only (vLLM's own scheduler)."""

    def __post_init__(self) -> None:
        require(self.draws >= 1, "draws", f"must be >= 1, got {self.draws}")
        require(bool(self.margins) and min(self.margins) >= 0, "margins", f"must be >= 0, got {self.margins}")
        bad = [order.value for order in self.orders if order not in (Admission.FCFS, Admission.SJF, Admission.LPT)]
        require(not bad, "orders", f"take fcfs, sjf or lpt, got {bad}")

    @classmethod
    def from_tune(cls, tune: TuneConfig, reservations: bool = True) -> KVTuneConfig:
        """The search a command's --tune options ask for (objective, draws, seed, min_gain)."""
        return cls(tune.objective, draws=tune.draws, seed=tune.seed, min_gain=tune.min_gain, reservations=reservations)


@dataclass(frozen=True)
class KVPolicy:
    """An admission rule and an order (and the margin of a predicted reservation)."""

    kv_admission: KVAdmission = KVAdmission.GREEDY
    order: Admission = Admission.FCFS
    margin_ratio: float = 0.0

    @property
    def name(self) -> str:
        """Short label: greedy-fcfs, predicted-lpt+0.15, ..."""
        margin = f"+{self.margin_ratio:g}" if self.kv_admission is KVAdmission.PREDICTED else ""
        return f"{self.kv_admission.value}-{self.order.value}{margin}"

    @property
    def needs_predictions(self) -> bool:
        """True when the policy reads predicted lengths (an order other than fcfs, or predicted admission)."""
        return self.order is not Admission.FCFS or self.kv_admission is KVAdmission.PREDICTED

    def config(self, base: ScheduleConfig) -> ScheduleConfig:
        """The schedule that serves this policy."""
        return replace(base, policy=self.order, kv_admission=self.kv_admission, margin_ratio=self.margin_ratio)


def priorities_for(order: Admission, predicted: Sequence[int] | None, cfg: ScheduleConfig) -> list[int] | None:
    """Engine priorities of an order: none (arrival), the adjusted prediction (sjf) or its negation (lpt)."""
    if order is Admission.FCFS:
        return None
    if predicted is None:
        raise ValueError(f"{order.value} needs predicted lengths")
    values = [adjusted_length(int(value), cfg) for value in predicted]
    return [-value for value in values] if order is Admission.LPT else values


def candidates(config: KVTuneConfig, has_predictions: bool) -> list[KVPolicy]:
    """The baseline first (greedy, arrival order), then reserve-max and predicted admission in each order (greedy
    admission in each order only, without config.reservations)."""
    policies = [KVPolicy()]
    if config.reservations:
        policies.append(KVPolicy(KVAdmission.RESERVE_MAX))
    if has_predictions:
        for order in config.orders:
            if order is not Admission.FCFS:
                policies.append(KVPolicy(KVAdmission.GREEDY, order))
            if config.reservations:
                policies += [KVPolicy(KVAdmission.PREDICTED, order, margin) for margin in config.margins]
    return policies


@dataclass
class KVDecision:
    """The policy chosen for a workload, and what the simulation predicted."""

    policy: KVPolicy
    baseline: dict[str, float]
    chosen: dict[str, float]
    table: list[dict[str, Any]] = field(default_factory=list)
    fallback: bool = False
    tuning_s: float = 0.0
    objective: Objective = Objective.THROUGHPUT
    min_gain: float = 0.0
    """The share the winner had to beat the baseline by."""

    def describe(self) -> str:
        """One line for logs."""
        verdict = "baseline (no candidate predicted to win)" if self.fallback else self.policy.name
        return (
            f"KV admission: {verdict}; simulated {self.chosen['time_s']:.0f} s, mean latency "
            f"{self.chosen['latency_mean_s']:.0f} s, {self.chosen['preemptions']:.0f} preemptions (greedy-fcfs: "
            f"{self.baseline['time_s']:.0f} s, {self.baseline['latency_mean_s']:.0f} s, "
            f"{self.baseline['preemptions']:.0f}); tuned in {self.tuning_s:.1f} s"
        )

    def as_dict(self) -> dict[str, Any]:
        """For reports."""
        return {
            "policy": self.policy.name,
            "kv_admission": self.policy.kv_admission.value,
            "order": self.policy.order.value,
            "margin_ratio": self.policy.margin_ratio,
            "fallback": self.fallback,
            "objective": self.objective.value,
            "min_gain": self.min_gain,
            "simulated": self.chosen,
            "simulated_baseline": self.baseline,
            "tuning_s": self.tuning_s,
            "candidates": self.table,
        }


def simulate_policy(
    policy: KVPolicy,
    true: Sequence[int],
    predicted: Sequence[int] | None,
    prompts: Sequence[int],
    caps: Sequence[int],
    engine: KVEngine,
    cost: CostModel,
    base: ScheduleConfig,
) -> dict[str, float]:
    """One policy's simulated figures on one draw of true lengths."""
    cfg = policy.config(base)
    priorities = priorities_for(policy.order, predicted, cfg)
    reserves = reservations(policy.kv_admission, predicted, caps, cfg)
    hold = policy.kv_admission is KVAdmission.RESERVE_MAX
    return simulate_kv(true, prompts, caps, engine, cost, priorities, reserves, hold).summary()


def decide_kv(
    predicted: Sequence[int] | None,
    prompts: Sequence[int],
    caps: Sequence[int],
    errors: ErrorModel | None,
    engine: KVEngine,
    cost: CostModel,
    base: ScheduleConfig,
    config: KVTuneConfig | None = None,
    predictor_s: float = 0.0,
) -> KVDecision:
    """The KV admission rule and order for these requests (see the module docstring). errors: the predictor's
    held-out errors (ErrorModel.exact() for an oracle); predictor_s: what predicting these requests costs, added to
    every candidate that reads the predictions (greedy-fcfs and reserve-max need none)."""
    config = config or KVTuneConfig()
    started = time.perf_counter()
    rng = random.Random(config.seed)
    if predicted is None:
        raise ValueError("KV tuning needs predicted lengths (or true ones, for an oracle)")
    model = errors or ErrorModel.exact()
    draws = [model.draw(predicted, max(caps), rng) for _ in range(1 if model.is_exact else config.draws)]
    draws = [[min(value, cap) for value, cap in zip(draw, caps, strict=True)] for draw in draws]
    results: list[tuple[KVPolicy, dict[str, float]]] = []
    for policy in candidates(config, True):
        runs = [simulate_policy(policy, true, predicted, prompts, caps, engine, cost, base) for true in draws]
        mean = {key: statistics.fmean(run[key] for run in runs) for key in runs[0]}
        if policy.needs_predictions:  # the predictor runs before the first request starts
            mean["time_s"] += predictor_s
            mean["latency_mean_s"] += predictor_s
            mean["latency_p99_s"] += predictor_s
        results.append((policy, mean))
    baseline = results[0][1]
    key = "time_s" if config.objective is Objective.THROUGHPUT else "latency_mean_s"
    safe = [
        (policy, figures)
        for policy, figures in results
        if figures["time_s"] <= baseline["time_s"] * 1.0001
        and figures["latency_mean_s"] <= baseline["latency_mean_s"] * 1.0001
    ]
    policy, chosen = min(safe, key=lambda item: item[1][key])
    fallback = chosen[key] > baseline[key] * (1 - config.min_gain)
    if fallback:
        policy, chosen = results[0]
    table = [{"policy": item.name, **{name: round(value, 3) for name, value in mean.items()}} for item, mean in results]
    return KVDecision(
        policy, baseline, chosen, table, fallback, time.perf_counter() - started, config.objective, config.min_gain
    )


__all__ = [
    "KVDecision",
    "KVPolicy",
    "KVTuneConfig",
    "Objective",
    "candidates",
    "decide_kv",
    "priorities_for",
]
