"""Admission policies for continuous-batching engines (pure, no torch): which waiting request takes a free slot
first, and how many tokens each may generate in a pass. One set of policy objects serves every continuous engine
(the HF slot pool and vLLM): serving.runner.continuous turns a policy's passes into `engine.submit(prompts, caps,
priorities)` calls, and the engine admits lower priority values first, ties in arrival order.

- FCFS: arrival order, each request with its whole budget (what vLLM, TGI and SGLang do by default).
- SJF: shortest predicted first; the priority is the margin-adjusted predicted length (the oracle is SJF with the
  true lengths as predictions). Works since 2023 use predicted lengths this way (vLLM-LTR, TRAIL).
- SJF + FCR: SJF, and each request capped at its predicted bin's edge by the static batches' rule
  (serving.policy.scheduler.request_cap); the requests cut short go again after the rest, shortest budget first.
- LPT: longest predicted first.

With a bounded KV cache, cfg.kv_admission adds each request's KV reservation to the pass (`reservations`): none
(greedy, vLLM's rule), its budget (reserve-max) or its margin-adjusted prediction (predicted).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, replace

from serving.policy.scheduler import (
    Admission,
    KVAdmission,
    ScheduleConfig,
    Strategy,
    adjusted_length,
    bin_cap,
    request_cap,
)


@dataclass(frozen=True)
class Pass:
    """One submission to the engine: per request, its priority (lower first; None: arrival order), cap and KV
    reservation (generated tokens the engine keeps room for before admitting it; None: admit when the prompt fits)."""

    priorities: list[int] | None
    caps: list[int]
    reserves: list[int] | None = None
    hold: bool = False
    """The reservations are held whole from admission to the end (reserve-max: the classic static allocation); else
    each is expected to grow to its size and then leave, so later ones may start where earlier ones will be gone."""


class AdmissionPolicy(abc.ABC):
    """Decides the order and caps of a continuous run's passes."""

    needs_predictions: bool = True

    @property
    @abc.abstractmethod
    def name(self) -> Admission:
        """The policy's option value."""

    @abc.abstractmethod
    def first(self, predicted: Sequence[int] | None, budgets: Sequence[int], cfg: ScheduleConfig) -> Pass:
        """The first pass over requests that may generate `budgets` tokens (predicted: one length each, or None)."""

    def recompute(self, budgets: Sequence[int]) -> Pass:
        """The pass for requests cut short by their cap: each with its whole remaining budget, shortest first."""
        return Pass(list(budgets), list(budgets))


class FirstComeFirstServed(AdmissionPolicy):
    """Arrival order, no caps."""

    needs_predictions = False

    @property
    def name(self) -> Admission:
        """fcfs."""
        return Admission.FCFS

    def first(self, predicted: Sequence[int] | None, budgets: Sequence[int], cfg: ScheduleConfig) -> Pass:
        """Every request in arrival order with its whole budget."""
        return Pass(None, list(budgets))


@dataclass(frozen=True)
class ShortestPredictedFirst(AdmissionPolicy):
    """Shortest predicted length first; with `capped`, FCR's per-request caps on top."""

    capped: bool = False

    @property
    def name(self) -> Admission:
        """sjf or sjf-fcr."""
        return Admission.SJF_FCR if self.capped else Admission.SJF

    def first(self, predicted: Sequence[int] | None, budgets: Sequence[int], cfg: ScheduleConfig) -> Pass:
        """Priorities from the predictions; caps at each prediction's bin edge (plus one token) when capped."""
        if predicted is None or len(predicted) != len(budgets):
            raise ValueError(f"{self.name.value} needs one predicted length per request")
        priorities = [adjusted_length(int(value), cfg) for value in predicted]
        caps = list(budgets)
        if self.capped:
            caps = [request_cap(bin_cap(value, cfg), budget) for value, budget in zip(priorities, budgets, strict=True)]
        return Pass(priorities, caps)


@dataclass(frozen=True)
class LongestPredictedFirst(AdmissionPolicy):
    """Longest predicted length first: on a job that must finish as a whole, the long requests start early and the
    short ones fill in around them (LPT, the classic makespan rule)."""

    @property
    def name(self) -> Admission:
        """lpt."""
        return Admission.LPT

    def first(self, predicted: Sequence[int] | None, budgets: Sequence[int], cfg: ScheduleConfig) -> Pass:
        """Priorities: the negated margin-adjusted predictions; each request with its whole budget."""
        if predicted is None or len(predicted) != len(budgets):
            raise ValueError("lpt needs one predicted length per request")
        return Pass([-adjusted_length(int(value), cfg) for value in predicted], list(budgets))


def reservations(
    kv_admission: KVAdmission, predicted: Sequence[int] | None, caps: Sequence[int], cfg: ScheduleConfig
) -> list[int] | None:
    """The generated tokens each request reserves KV for: none (greedy), its cap (reserve-max), or its
    margin-adjusted prediction plus the stop token, at most its cap (predicted)."""
    if kv_admission is KVAdmission.AUTO:
        raise ValueError("kv_admission auto is decided before the run (serving.policy.kv_tuning)")
    if kv_admission is KVAdmission.GREEDY:
        return None
    if kv_admission is KVAdmission.RESERVE_MAX:
        return [int(cap) for cap in caps]
    if predicted is None or len(predicted) != len(caps):
        raise ValueError("predicted KV admission needs one predicted length per request")
    # A predicted length counts the answer's tokens; the stop token that ends it takes a KV slot too.
    return [
        max(1, min(int(cap), adjusted_length(int(value), cfg) + 1)) for value, cap in zip(predicted, caps, strict=True)
    ]


def with_reservations(submission: Pass, predicted: Sequence[int] | None, cfg: ScheduleConfig) -> Pass:
    """The pass with the KV reservations cfg.kv_admission asks for."""
    reserves = reservations(cfg.kv_admission, predicted, submission.caps, cfg)
    return replace(submission, reserves=reserves, hold=cfg.kv_admission is KVAdmission.RESERVE_MAX)


def make_policy(admission: Admission, strategy: Strategy = Strategy.VANILLA) -> AdmissionPolicy:
    """The policy object for a name; auto takes the strategy's continuous counterpart (vanilla -> FCFS, seqsch and
    vbs -> SJF, fcr -> SJF with FCR caps)."""
    if admission is Admission.AUTO:
        if strategy is Strategy.VANILLA:
            admission = Admission.FCFS
        else:
            admission = Admission.SJF_FCR if strategy is Strategy.FCR else Admission.SJF
    if admission is Admission.FCFS:
        return FirstComeFirstServed()
    if admission is Admission.LPT:
        return LongestPredictedFirst()
    return ShortestPredictedFirst(capped=admission is Admission.SJF_FCR)


def policy_for(cfg: ScheduleConfig) -> AdmissionPolicy:
    """The policy a continuous run applies: cfg.policy, or the strategy's counterpart when it is auto."""
    return make_policy(cfg.policy, cfg.strategy)


__all__ = [
    "AdmissionPolicy",
    "FirstComeFirstServed",
    "LongestPredictedFirst",
    "Pass",
    "ShortestPredictedFirst",
    "make_policy",
    "policy_for",
    "reservations",
    "with_reservations",
]
