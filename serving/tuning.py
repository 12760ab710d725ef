"""Choose scheduling knobs from data, by simulation (pure, no torch): the safety margin and bin width from a
predictor's validation errors, and per-bin batch sizes (VBS) from a measured step-cost model.

Both search on (predicted, true) pairs of held-out requests and minimise serving.simulate's predicted time
for serving them all; the paper's fixed choices (no margin, bins of 50, its VBS table) are among the
candidates, so a tuned config is never predicted to be slower than the paper's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from serving.scheduler import ScheduleConfig
from serving.simulate import StepCost, simulate_workloads

MARGIN_TOKENS = (0, 10, 25, 50, 75, 100, 150)
MARGIN_RATIOS = (0.0, 0.1, 0.25, 0.5)
BIN_WIDTHS = (25, 50, 100)
BATCH_SIZES = (4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


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


def _time(
    predicted: Sequence[int],
    true: Sequence[int],
    cfg: ScheduleConfig,
    cost: StepCost,
    prompt_tokens: int,
    workload: int | None = None,
) -> tuple[float, dict[str, float | int | str]]:
    result = simulate_workloads(predicted, true, cfg, cost, workload=workload, prompt_tokens=prompt_tokens)
    summary = result.summary()
    return float(summary["time_s"]), summary


def tune_margin(
    predicted: Sequence[int],
    true: Sequence[int],
    cfg: ScheduleConfig,
    cost: StepCost | None = None,
    *,
    margin_tokens: Sequence[int] = MARGIN_TOKENS,
    margin_ratios: Sequence[float] = MARGIN_RATIOS,
    bin_widths: Sequence[int] = BIN_WIDTHS,
    flat_sizes: Sequence[int] = (),
    prompt_tokens: int = 64,
    workload: int | None = None,
) -> Tuned:
    """The margin (additive and multiplicative) and bin width that serve these requests fastest.

    Each (bin width, margin) is tried with cfg's VBS table and, when flat_sizes is given, with one batch size for
    every bin (each of flat_sizes): the best margin depends on the batch sizes it is served with, and a flat
    table is a far better start for tune_vbs than the paper's (whose coordinate descent otherwise stalls in a
    table that fits the held-out requests' few long bins, not the next workload). workload: simulate the
    requests as runs of this many (the size of the runs the policy is for; None: all at once).
    """
    cost = cost or StepCost()
    baseline_s, _ = _time(predicted, true, cfg, cost, prompt_tokens, workload)
    best, best_s = cfg, baseline_s
    rows = []
    for width in dict.fromkeys([cfg.bin_width, *bin_widths]):
        for ratio in margin_ratios:
            for tokens in margin_tokens:
                candidate = replace(cfg, bin_width=width, margin_ratio=ratio, margin_tokens=tokens)
                tables = [candidate, *(flat_table(candidate, size) for size in flat_sizes)]
                for table in tables:
                    seconds, summary = _time(predicted, true, table, cost, prompt_tokens, workload)
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
    predicted: Sequence[int],
    true: Sequence[int],
    cfg: ScheduleConfig,
    cost: StepCost | None = None,
    *,
    sizes: Sequence[int] = BATCH_SIZES,
    rounds: int = 2,
    prompt_tokens: int = 64,
    workload: int | None = None,
) -> Tuned:
    """Per-bin batch sizes that serve these requests fastest under the cost model (coordinate descent over the
    bins, smallest first, `rounds` times; `batch_size` covers bins above the table and recompute batches);
    workload as in tune_margin."""
    cost = cost or StepCost()
    baseline_s, _ = _time(predicted, true, cfg, cost, prompt_tokens, workload)
    edges = _edges(cfg)
    # Start from the current table spelled out on this bin grid, so each edge can move on its own.
    current = replace(cfg, vbs={edge: _size_at(cfg, edge) for edge in edges})
    best_s = baseline_s
    rows: list[dict[str, float | int | str]] = []
    for _ in range(rounds):
        improved = False
        for edge in [*edges, None]:  # None: the fixed batch_size (recompute batches)
            for size in sizes:
                if edge is None:
                    candidate = replace(current, batch_size=size)
                else:
                    candidate = replace(current, vbs={**current.vbs, edge: size})
                seconds, summary = _time(predicted, true, candidate, cost, prompt_tokens, workload)
                rows.append({"edge": "default" if edge is None else edge, "size": size, **summary})
                if seconds < best_s - 1e-9:
                    current, best_s, improved = candidate, seconds, True
        if not improved:
            break
    return Tuned(current, baseline_s, best_s, rows)


def _size_at(cfg: ScheduleConfig, edge: int) -> int:
    fitting = [key for key in cfg.vbs if edge <= key]
    return cfg.vbs[min(fitting)] if fitting else cfg.batch_size
