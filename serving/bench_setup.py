"""What the bench decides before any row runs: the engine's measured step cost, the tuned policy (margin, bins and
VBS chosen by simulation on a predictor's held-out errors) and, under a time budget, how many prompts fit.

Held-out errors come from a length dataset (`tune_data`, needs the datasets library) or from a small lengths file
(`tune_lengths`: JSONL {id, true[, prompt]}, the predictor predicts those ids), which is all a GPU machine without
the datasets library needs.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from seqsched.engines.api import Engine
from seqsched.errors import SeqschedError
from seqsched.length_files import read_length_records
from seqsched.requests import Request
from serving.predictors import RequestPredictor
from serving.scheduler import ScheduleConfig, Strategy
from serving.simulate import StepCost, simulate

log = logging.getLogger(__name__)

SIZING_SAFETY = 0.85
"""The share of the time left that the simulated rows may fill (the fit misses some per-batch overhead)."""
MAX_WORKLOADS = 8
"""Tuning for runs of W requests simulates at most this many runs per candidate (the first 8 W held-out
requests), so tuning for small runs costs no more than for large ones."""


@dataclass
class HeldOut:
    """A predictor's predictions and the true lengths on requests it was not trained on."""

    source: str
    predicted: list[int]
    true: list[int]
    prompt_tokens: int | None = None
    """Mean prompt tokens of the held-out prompts, when the source has prompts."""


def measure_cost(
    engine: Engine, batch_sizes: Sequence[int], prompt_lengths: Sequence[int], steps: int = 12
) -> tuple[StepCost, list[dict[str, float | int]]]:
    """The engine's step cost, fitted to timed batches (and the measured-vs-fitted table)."""
    from serving.costmodel import fit, measure, report

    samples = measure(engine, batch_sizes=tuple(batch_sizes), prompt_lengths=tuple(prompt_lengths), steps=steps)
    cost = fit(samples)
    return cost, report(samples, cost)


def held_out_from_dataset(
    engine: Engine,
    predictor: RequestPredictor,
    data_dir: str | Path,
    split: str | None = None,
    start: int = 0,
    limit: int | None = None,
) -> HeldOut:
    """Predictions and max lengths on a length dataset's slice (the datasets library is needed)."""
    from lengthpred.data import load_length_data

    data = load_length_data(str(data_dir), split, start, limit)
    held_out = [Request(id=key, prompt=prompt) for key, prompt in zip(data.ids, data.prompts, strict=True)]
    prompt_tokens = round(statistics.mean(len(engine.encode(prompt)) for prompt in data.prompts[:64]))
    return HeldOut(data.source, predictor.predict_requests(held_out), list(data.max_lengths), prompt_tokens)


def held_out_from_lengths(predictor: RequestPredictor, path: str | Path) -> HeldOut:
    """Predictions for a lengths file's ids (by id, or from its prompts) and the file's true lengths."""
    records = read_length_records(path)
    if not records:
        raise SeqschedError(f"--tune_lengths {path}: no records")
    requests = [Request(id=record.id, prompt=record.prompt or "") for record in records]
    return HeldOut(str(path), predictor.predict_requests(requests), [record.length for record in records])


def tune_on(
    held_out: HeldOut, policy: ScheduleConfig, cost: StepCost, prompt_tokens: int, workload: int | None = None
) -> tuple[ScheduleConfig, dict[str, Any]]:
    """`policy` with margin, bin width and VBS re-chosen by simulating the held-out requests (in runs of
    `workload` requests, the size of the run it is for)."""
    from serving.tuning import BATCH_SIZES, tune_margin, tune_vbs

    started = time.perf_counter()
    tokens = held_out.prompt_tokens or prompt_tokens
    predicted, true = held_out.predicted, held_out.true
    if workload is not None and workload < len(true):
        keep = min(len(true), MAX_WORKLOADS * workload)
        predicted, true = predicted[:keep], true[:keep]
    margin = tune_margin(
        predicted,
        true,
        policy,
        cost,
        flat_sizes=BATCH_SIZES,
        prompt_tokens=tokens,
        workload=workload,
    )
    vbs = tune_vbs(predicted, true, margin.config, cost, prompt_tokens=tokens, workload=workload)
    tuned = vbs.config
    info = {
        "data": held_out.source,
        "records": len(true),
        "workload": workload,
        "step_cost": asdict(cost),
        "prompt_tokens": tokens,
        "simulated_paper_policy_s": margin.baseline_s,
        "simulated_after_margin_s": margin.best_s,
        "simulated_after_vbs_s": vbs.best_s,
        "margin_tokens": tuned.margin_tokens,
        "margin_ratio": tuned.margin_ratio,
        "bin_width": tuned.bin_width,
        "batch_size": tuned.batch_size,
        "vbs": tuned.vbs,
        "tuning_s": time.perf_counter() - started,
    }
    return tuned, info


TUNING_CANDIDATES = 1300
"""About how many simulations tune_margin and tune_vbs run (3 widths x 4 ratios x 7 margins x 12 tables, then up
to 2 rounds over 12 batch-size slots x 11 sizes)."""


def tuning_estimate_s(held_out: HeldOut, policy: ScheduleConfig, cost: StepCost, prompt_tokens: int) -> float:
    """Seconds tuning will take here: one simulation of the held-out requests, timed, times the candidates."""
    from serving.simulate import simulate_workloads

    started = time.perf_counter()
    simulate_workloads(held_out.predicted, held_out.true, policy, cost, prompt_tokens=prompt_tokens)
    return (time.perf_counter() - started) * TUNING_CANDIDATES


def tune_schedule(
    engine: Engine,
    predictor: RequestPredictor,
    policy: ScheduleConfig,
    data_dir: str | Path,
    split: str | None = None,
    start: int = 0,
    limit: int | None = None,
) -> tuple[ScheduleConfig, dict[str, Any]]:
    """`policy` with its margin, bin width and VBS re-chosen: the engine's step cost is measured, the predictor
    runs on a held-out length dataset, and serving those requests is simulated for each candidate."""
    started = time.perf_counter()
    cost, _ = measure_cost(engine, (1, 4, 16, 32, 64), (32, 160))
    held_out = held_out_from_dataset(engine, predictor, data_dir, split, start, limit)
    assert held_out.prompt_tokens is not None
    tuned, info = tune_on(held_out, policy, cost, held_out.prompt_tokens)
    info["tuning_s"] = time.perf_counter() - started
    return tuned, info


@dataclass(frozen=True)
class RowPlan:
    """One table row as the sizing simulates it: its schedule and whether it schedules by the true lengths."""

    name: str
    config: ScheduleConfig
    oracle: bool = False


def simulated_seconds(
    rows: Sequence[RowPlan],
    predicted: Sequence[int] | None,
    true: Sequence[int],
    prompt_tokens: Sequence[int],
    cost: StepCost,
    count: int,
) -> dict[str, float]:
    """Each row's simulated time on the first `count` requests (replayed lengths: the simulation is exact but
    for the step-cost fit)."""
    seconds = {}
    for row in rows:
        truth = [min(value, row.config.limit) for value in true[:count]]
        if row.oracle or row.config.strategy is Strategy.VANILLA or predicted is None:
            guess = truth
        else:
            guess = list(predicted[:count])
        result = simulate(guess, truth, row.config, cost, prompt_tokens=list(prompt_tokens[:count]))
        seconds[row.name] = result.total.time_s
    return seconds


def candidate_counts(total: int) -> list[int]:
    """Prompt counts the sizing tries, largest first: all, then every 25 below, then 16, 8, 4, 2, 1."""
    counts = [total, *range(total - total % 25, 0, -25)]
    counts += [value for value in (16, 8, 4, 2, 1) if value < min(counts)]
    return list(dict.fromkeys(value for value in counts if 0 < value <= total))


def fit_count(
    rows: Sequence[RowPlan],
    predicted: Sequence[int] | None,
    true: Sequence[int],
    prompt_tokens: Sequence[int],
    cost: StepCost,
    seconds_left: float,
    repeats: int = 1,
) -> tuple[int, dict[str, Any]]:
    """The most prompts (a prefix) whose rows, `repeats` rounds each, are simulated to fit SIZING_SAFETY of the
    seconds left; at least one."""
    allowed = seconds_left * SIZING_SAFETY
    tried = []
    chosen, chosen_rows = 0, {}
    for count in candidate_counts(len(true)):
        chosen, chosen_rows = count, simulated_seconds(rows, predicted, true, prompt_tokens, cost, count)
        total = repeats * sum(chosen_rows.values())
        tried.append({"count": count, "simulated_s": round(total, 1)})
        if total <= allowed:
            break  # else the smallest count runs, over budget: a one-prompt table beats none
    info = {
        "seconds_left": round(seconds_left, 1),
        "allowed_s": round(allowed, 1),
        "count": chosen,
        "simulated_row_s": {name: round(value, 1) for name, value in chosen_rows.items()},
        "tried": tried,
        "step_cost": asdict(cost),
    }
    return chosen, info


def starting_policy(config: ScheduleConfig) -> ScheduleConfig:
    """The policy the scheduled rows start from (FCR, the config's bins, VBS and margin)."""
    return replace(config.schedule(), strategy=Strategy.FCR)
