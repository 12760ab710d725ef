"""Tune the schedule on the workload actually served (pure, no torch): the served requests' predicted and prompt
lengths, with true lengths drawn from a predictor's held-out errors, and a guard that serves vanilla batches when
the schedule is not predicted to win.

A policy fitted on another set of requests (the held-out set itself) bets on that set's length mix: on long
answers it chose 192-row batches that a CPU runs slower per row than vanilla's 16 (issue 13). Here the errors
(log((true + 1) / (predicted + 1)) per held-out request, grouped by predicted-length bin) are resampled onto the
served predictions, a few draws of true lengths per request, and the search (serving.policy.tuning) runs on those
draws with the served prompts, so padding, the token budget and the served length mix all count.
"""

from __future__ import annotations

import bisect
import enum
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from seqsched.errors import require
from serving.policy.scheduler import ScheduleConfig, Strategy
from serving.policy.stepcost import CostModel
from serving.policy.tuning import BATCH_SIZES, Workload, clip_to_budget, tune_margin, tune_vbs


class Objective(enum.Enum):
    """What tuning a continuous engine's admission and order minimises (serving.policy.kv_tuning)."""

    THROUGHPUT = "throughput"
    """The run's total time (an offline job)."""
    LATENCY = "latency"
    """The mean completion time."""


@dataclass(frozen=True)
class TuneConfig:
    """Tune margin, bins and VBS by simulation on the requests being served, with a predictor's held-out errors."""

    data: str | None = None
    """A length dataset held out from the predictor's training: the predictor runs on it and its errors are
    resampled onto the served requests' predictions (no tuning without it or `lengths`; the oracle needs none)."""
    lengths: str | None = None
    """Instead of `data`, without the datasets library: the held-out requests' true lengths in a lengths file
    (JSONL {id, true[, prompt]}, see seqsched.length_files); the predictor predicts those ids (an oracle:FILE
    predictor must cover them; a registered predictor needs each line's prompt)."""
    split: str | None = None
    """Its split (default: the dataset's only one)."""
    start: int = 0
    limit: int | None = None
    """Use this many held-out records (default: all)."""
    draws: int = 4
    """Draws of true lengths per served request; each candidate's time is the mean over them."""
    seed: int = 0
    min_gain: float = 0.05
    """The tuned schedule must be predicted this much faster than vanilla (0.05: 5%), else vanilla batches serve."""
    quantiles: tuple[float, ...] = ()
    """With a predictor that gives a length distribution (the probe): each request's length is the q-quantile of
    its distribution for each q given here (risk-aware FCR caps: an uncertain request gets a higher cap), each q
    is tuned on its own held-out errors, and the fastest is served. Empty: the predictor's own point."""
    objective: Objective = Objective.THROUGHPUT
    """On a continuous engine (`--kv_admission auto`, bench's cb-tuned and vllm-tuned rows): what the chosen
    admission rule and order minimise, the run's total time (`throughput`) or the mean completion time (`latency`);
    either way the choice must be predicted no slower and no later on mean than FCFS."""

    def __post_init__(self) -> None:
        require(self.draws >= 1, "draws", f"must be >= 1, got {self.draws}")
        require(self.start >= 0, "start", f"must be >= 0, got {self.start}")
        require(self.limit is None or self.limit >= 1, "limit", f"must be >= 1, got {self.limit}")
        require(self.min_gain >= 0, "min_gain", f"must be >= 0, got {self.min_gain}")
        require(all(0 < q < 1 for q in self.quantiles), "quantiles", f"must be in (0, 1), got {self.quantiles}")
        require(not (self.data and self.lengths), "lengths", "give tune.data or tune.lengths, not both")

    @property
    def held_out(self) -> str | None:
        """The held-out source that turns tuning on (tune.data or tune.lengths), None when neither is given."""
        return self.data or self.lengths


@dataclass(frozen=True)
class ErrorModel:
    """A predictor's multiplicative errors, log((true + 1) / (predicted + 1)), by predicted-length bin."""

    edges: tuple[int, ...]
    """Upper edge (inclusive) of each bin of predicted lengths; the last bin takes everything above too."""
    errors: tuple[tuple[float, ...], ...]
    """The held-out log-ratios of each bin."""

    @classmethod
    def fit(cls, predicted: Sequence[int], true: Sequence[int], bin_width: int = 50, min_count: int = 20) -> ErrorModel:
        """Bins of bin_width predicted tokens, a sparse bin merged into its neighbour until each holds min_count
        pairs (or all of them)."""
        if len(predicted) != len(true) or not predicted:
            raise ValueError("the error model needs as many true lengths as predictions (at least one)")
        by_bin: dict[int, list[float]] = {}
        for guess, actual in zip(predicted, true, strict=True):
            edge = max(1, math.ceil(max(0, guess) / bin_width)) * bin_width
            by_bin.setdefault(edge, []).append(math.log((max(0, actual) + 1) / (max(0, guess) + 1)))
        edges: list[int] = []
        groups: list[list[float]] = []
        for edge in sorted(by_bin):
            if groups and len(groups[-1]) < min_count:
                groups[-1].extend(by_bin[edge])
                edges[-1] = edge
            else:
                groups.append(list(by_bin[edge]))
                edges.append(edge)
        if len(groups) > 1 and len(groups[-1]) < min_count:  # a sparse last bin joins the one below
            last_group, last_edge = groups.pop(), edges.pop()
            groups[-1].extend(last_group)
            edges[-1] = last_edge
        return cls(tuple(edges), tuple(tuple(group) for group in groups))

    @classmethod
    def exact(cls) -> ErrorModel:
        """No error (oracle lengths)."""
        return cls((1,), ((0.0,),))

    @property
    def is_exact(self) -> bool:
        """True when every error is zero."""
        return all(value == 0.0 for group in self.errors for value in group)

    def draw(self, predicted: Sequence[int], limit: int, rng: random.Random) -> list[int]:
        """One true length per prediction: an error of its bin applied, within 0..limit."""
        lengths = []
        for guess in predicted:
            group = self.errors[min(len(self.edges) - 1, bisect.bisect_left(self.edges, guess))]
            value = round((max(0, guess) + 1) * math.exp(rng.choice(group))) - 1
            lengths.append(max(0, min(limit, value)))
        return lengths

    def summary(self) -> dict[str, Any]:
        """Per bin: its edge, count and median ratio (true / predicted)."""
        return {
            "bins": [
                {"up_to": edge, "count": len(group), "median_ratio": math.exp(statistics.median(group))}
                for edge, group in zip(self.edges, self.errors, strict=True)
            ]
        }


def vanilla_config(cfg: ScheduleConfig, batch_size: int) -> ScheduleConfig:
    """Vanilla batches: input order, a fixed batch size, the limit (the token budget still applies)."""
    return replace(cfg, strategy=Strategy.VANILLA, batch_size=batch_size)


@dataclass
class Decision:
    """What to serve: the tuned schedule when it is predicted to beat vanilla by min_gain, else vanilla batches."""

    config: ScheduleConfig
    """The config to serve."""
    scheduled: ScheduleConfig
    """The tuned schedule (also when vanilla was chosen)."""
    scheduled_s: float
    """Its mean simulated time over the draws."""
    vanilla_s: float
    """Vanilla's, on the same draws."""
    fallback: bool
    """True when vanilla batches serve."""
    min_gain: float
    draws: int
    tuning_s: float = 0.0
    """Seconds the search took."""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def predicted_gain(self) -> float:
        """Vanilla's simulated time over the schedule's (above 1: the schedule is predicted faster)."""
        return self.vanilla_s / self.scheduled_s if self.scheduled_s else 1.0

    def describe(self) -> str:
        """One line for the output."""
        cfg = self.scheduled
        policy = (
            f"margin +{cfg.margin_tokens} x{1 + cfg.margin_ratio:.2f}, bins of {cfg.bin_width}, vbs "
            f"{dict(sorted(cfg.vbs.items()))}, recompute batch {cfg.batch_size}"
        )
        versus = (
            f"simulated {self.scheduled_s:.0f} s vs vanilla {self.vanilla_s:.0f} s "
            f"({self.predicted_gain:.2f}x, mean of {self.draws} draws)"
        )
        if self.fallback:
            return (
                f"serving VANILLA batches: the tuned schedule ({policy}) is not predicted to win by "
                f"{self.min_gain:.0%}: {versus}"
            )
        return f"tuned schedule: {policy}; {versus}"

    def as_dict(self) -> dict[str, Any]:
        """For metrics and bench JSON."""
        cfg = self.scheduled
        return {
            "fallback_to_vanilla": self.fallback,
            "simulated_s": self.scheduled_s,
            "simulated_vanilla_s": self.vanilla_s,
            "predicted_gain": self.predicted_gain,
            "min_gain": self.min_gain,
            "draws": self.draws,
            "tuning_s": self.tuning_s,
            "margin_tokens": cfg.margin_tokens,
            "margin_ratio": cfg.margin_ratio,
            "bin_width": cfg.bin_width,
            "vbs": cfg.vbs,
            "batch_size": cfg.batch_size,
            "token_budget": cfg.token_budget,
            **self.details,
        }


def draw_workload(
    predicted: Sequence[int],
    prompts: int | Sequence[int],
    errors: ErrorModel,
    limit: int,
    *,
    limits: Sequence[int] | None = None,
    draws: int = 4,
    seed: int = 0,
    evict_finished: bool = False,
) -> Workload:
    """The served requests with `draws` draws of true lengths (one when the errors are exact)."""
    rng = random.Random(seed)
    count = 1 if errors.is_exact else draws
    true = tuple(errors.draw(predicted, limit, rng) for _ in range(count))
    return Workload(predicted, true, prompts, limits, evict_finished)


def decide(
    workload: Workload,
    start: ScheduleConfig,
    vanilla: ScheduleConfig,
    cost: CostModel,
    min_gain: float = 0.05,
    *,
    tune: bool = True,
) -> Decision:
    """Tune start (margin and bin width with its table and flat tables, then VBS) on the workload, compare with
    vanilla's simulated time on the same draws, and choose."""
    started = time.perf_counter()
    scheduled = start
    details: dict[str, Any] = {}
    if tune:
        margin = tune_margin(workload, start, cost, flat_sizes=BATCH_SIZES)
        vbs = tune_vbs(workload, margin.config, cost)
        scheduled = clip_to_budget(vbs.config, workload.min_prompt)
        details = {
            "simulated_start_s": margin.baseline_s,
            "simulated_after_margin_s": margin.best_s,
            "simulated_after_vbs_s": vbs.best_s,
            "candidates": len(margin.candidates) + len(vbs.candidates),
        }
    scheduled_s, _ = workload.time(scheduled, cost)
    vanilla_s, _ = workload.time(vanilla, cost)
    fallback = scheduled_s * (1 + min_gain) > vanilla_s
    return Decision(
        config=vanilla if fallback else scheduled,
        scheduled=scheduled,
        scheduled_s=scheduled_s,
        vanilla_s=vanilla_s,
        fallback=fallback,
        min_gain=min_gain,
        draws=len(workload.true),
        tuning_s=time.perf_counter() - started,
        details=details,
    )


__all__ = ["Decision", "ErrorModel", "Objective", "TuneConfig", "decide", "draw_workload", "vanilla_config"]
