"""Choose scheduling knobs by simulation (pure, no torch): the safety margin, bin width and per-bin batch sizes
(VBS) that serve a workload fastest under a step-cost model.

A `Workload` is what is being served: the predicted lengths, one or more draws of true lengths (held-out errors
resampled onto these predictions: serving.policy.workload), the prompt lengths (a batch is padded to its longest and
the token budget counts them) and the requests' own limits. A candidate's time is its mean simulated time over
the draws. The starting config (the paper's choices) is among the candidates, so a tuned config is never
predicted slower than it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from serving.policy.scheduler import ScheduleConfig
from serving.policy.simulate import simulate
from serving.policy.stepcost import CostModel, StepCost

MARGIN_TOKENS = (0, 10, 25, 50, 75, 100, 150)
MARGIN_RATIOS = (0.0, 0.1, 0.25, 0.5)
BIN_WIDTHS = (25, 50, 100)
BATCH_SIZES = (4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


@dataclass(frozen=True)
class Workload:
    """Requests to serve, as the simulator sees them."""

    predicted: Sequence[int]
    true: Sequence[Sequence[int]]
    """Draws of true lengths (each one per request); a candidate is timed on each and averaged."""
    prompts: int | Sequence[int] = 64
    """Prompt tokens: one for all, or each request's."""
    limits: Sequence[int] | None = None
    """Each request's own limit (None: the config's limit)."""
    evict_finished: bool = False

    def __post_init__(self) -> None:
        if not self.true:
            raise ValueError("a workload needs at least one draw of true lengths")
        count = len(self.predicted)
        if any(len(draw) != count for draw in self.true):
            raise ValueError("every draw of true lengths needs one length per request")

    @classmethod
    def single(cls, predicted: Sequence[int], true: Sequence[int], prompt_tokens: int | Sequence[int] = 64) -> Workload:
        """One trace of (predicted, true) pairs."""
        return cls(predicted, (true,), prompt_tokens)

    @property
    def min_prompt(self) -> int:
        """The shortest prompt the token budget counts: each request's when known; with one length for all the
        plan counts the cap alone (scheduler.plan without prompts), so 0."""
        return 0 if isinstance(self.prompts, int) else min(self.prompts, default=0)

    def time(self, cfg: ScheduleConfig, cost: CostModel) -> tuple[float, dict[str, float | int | str]]:
        """Mean simulated seconds over the draws, and the summary of the first draw (with that mean as time_s)."""
        times = []
        first: dict[str, float | int | str] = {}
        for draw in self.true:
            result = simulate(
                self.predicted,
                draw,
                cfg,
                cost,
                limits=self.limits,
                prompt_tokens=self.prompts,
                evict_finished=self.evict_finished,
            )
            times.append(result.total.time_s)
            if not first:
                first = result.summary()
        mean = statistics.fmean(times)
        return mean, {**first, "time_s": mean}


@dataclass
class Tuned:
    """The chosen config and every candidate's simulated figures (the search's table)."""

    config: ScheduleConfig
    baseline_s: float
    """Predicted time of the starting config."""
    best_s: float
    candidates: list[dict[str, float | int | str]] = field(default_factory=list)

    @property
    def gain(self) -> float:
        """Predicted speed-up over the starting config (1.0: none)."""
        return self.baseline_s / self.best_s if self.best_s else 1.0


def budget_rows(cfg: ScheduleConfig, edge: int, min_prompt: int) -> int | None:
    """The most rows the token budget lets a batch capped at `edge` hold (None: no budget)."""
    if cfg.token_budget is None:
        return None
    return max(1, cfg.token_budget // (min_prompt + edge))


def tune_margin(
    workload: Workload,
    cfg: ScheduleConfig,
    cost: CostModel | None = None,
    *,
    margin_tokens: Sequence[int] = MARGIN_TOKENS,
    margin_ratios: Sequence[float] = MARGIN_RATIOS,
    bin_widths: Sequence[int] = BIN_WIDTHS,
    flat_sizes: Sequence[int] = (),
) -> Tuned:
    """The margin (additive and multiplicative) and bin width that serve the workload fastest.

    Each (bin width, margin) is tried with cfg's VBS table and, when flat_sizes is given, with one batch size for
    every bin (each of flat_sizes): the best margin depends on the batch sizes it is served with, and a flat
    table is a far better start for tune_vbs than the paper's (whose coordinate descent otherwise stalls in a
    table that fits the held-out requests' few long bins, not the next workload).
    """
    cost = cost or StepCost()
    baseline_s, _ = workload.time(cfg, cost)
    best, best_s = cfg, baseline_s
    rows = []
    for width in dict.fromkeys([cfg.bin_width, *bin_widths]):
        for ratio in margin_ratios:
            for tokens in margin_tokens:
                candidate = replace(cfg, bin_width=width, margin_ratio=ratio, margin_tokens=tokens)
                tables = [candidate, *(flat_table(candidate, size) for size in flat_sizes)]
                for table in tables:
                    seconds, summary = workload.time(table, cost)
                    flat = "" if table is candidate else table.batch_size
                    rows.append(
                        {"bin_width": width, "margin_ratio": ratio, "margin_tokens": tokens, "flat": flat, **summary}
                    )
                    if seconds < best_s - 1e-9:
                        best, best_s = table, seconds
    return Tuned(best, baseline_s, best_s, rows)


def _edges(cfg: ScheduleConfig) -> list[int]:
    """The upper edges of cfg's bins, the last one at the limit."""
    return [*range(cfg.bin_width, cfg.limit, cfg.bin_width), cfg.limit]


def flat_table(cfg: ScheduleConfig, size: int) -> ScheduleConfig:
    """cfg with one batch size for every bin and for recompute batches."""
    return replace(cfg, vbs=dict.fromkeys(_edges(cfg), size), batch_size=size)


def tune_vbs(
    workload: Workload,
    cfg: ScheduleConfig,
    cost: CostModel | None = None,
    *,
    sizes: Sequence[int] = BATCH_SIZES,
    rounds: int = 2,
) -> Tuned:
    """Per-bin batch sizes that serve the workload fastest under the cost model (coordinate descent over the bins,
    smallest first, `rounds` times; `batch_size` covers bins above the table and recompute batches). Sizes the
    token budget never allows at a bin are not tried there, and the result's table is clipped to the budget, so
    the tuner never proposes a batch above it."""
    cost = cost or StepCost()
    baseline_s, _ = workload.time(cfg, cost)
    edges = _edges(cfg)
    # Start from the current table spelled out on this bin grid, so each edge can move on its own.
    current = clip_to_budget(replace(cfg, vbs={edge: _size_at(cfg, edge) for edge in edges}), workload.min_prompt)
    best_s = baseline_s
    rows: list[dict[str, float | int | str]] = []
    for _ in range(rounds):
        improved = False
        for edge in [*edges, None]:  # None: the fixed batch_size (recompute batches)
            most = budget_rows(current, cfg.limit if edge is None else edge, workload.min_prompt)
            for size in sizes:
                if most is not None and size > most:
                    continue
                if edge is None:
                    candidate = replace(current, batch_size=size)
                else:
                    candidate = replace(current, vbs={**current.vbs, edge: size})
                seconds, summary = workload.time(candidate, cost)
                rows.append({"edge": "default" if edge is None else edge, "size": size, **summary})
                if seconds < best_s - 1e-9:
                    current, best_s, improved = candidate, seconds, True
        if not improved:
            break
    return Tuned(current, baseline_s, best_s, rows)


def clip_to_budget(cfg: ScheduleConfig, min_prompt: int = 0) -> ScheduleConfig:
    """cfg with each VBS entry (and the fixed size) lowered to the rows the token budget allows at it: the plan
    would cut them anyway; the table then says what is served."""
    if cfg.token_budget is None:
        return cfg
    vbs = {edge: min(size, budget_rows(cfg, edge, min_prompt) or size) for edge, size in cfg.vbs.items()}
    batch_size = min(cfg.batch_size, budget_rows(cfg, cfg.limit, min_prompt) or cfg.batch_size)
    return replace(cfg, vbs=vbs, batch_size=batch_size)


def _size_at(cfg: ScheduleConfig, edge: int) -> int:
    fitting = [key for key in cfg.vbs if edge <= key]
    return cfg.vbs[min(fitting)] if fitting else cfg.batch_size
