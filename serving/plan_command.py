"""`seqsched plan`: the scheduler alone, no model (no torch import) — a length trace in, a batch plan out.

Trace: JSONL lines {"id": str, "predicted": int, "true": int (optional)}.
Plan: {"strategy": ..., "batches": [{"phase": "initial" | "recompute", "ids": [...], "max_new_tokens": int}]};
with true lengths, the recompute batches hold the requests whose min(true, limit) exceeds their batch's cap.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from seqsched.errors import InputError, SeqschedError, require, require_at_least
from seqsched.files import check_writable, write_json
from seqsched.requests import read_utf8
from seqsched.tables import table
from serving.policy.scheduler import (
    Batch,
    RecomputeMode,
    ScheduleConfig,
    engine_steps,
    failed_requests,
    recompute_plan,
)
from serving.policy.scheduler import (
    plan as plan_batches,
)
from serving.policy.simulate import simulate, simulate_batches
from serving.policy.stepcost import CostModel, StepCost, cost_from_dict
from serving.policy.workload import ErrorModel, decide, draw_workload, vanilla_config

PLAN_TOKEN_BUDGET = 12800
"""`seqsched plan`'s default: len(ids) x max_new_tokens <= 12800 for every batch of more than one request."""


@dataclass(frozen=True)
class PlanConfig(ScheduleConfig):
    """Plan batches for a length trace (no model): sort, bin, VBS, FCR, and the recompute pass."""

    lengths: str = ""
    """The trace: JSONL lines {"id": str, "predicted": int, "true": int (optional)}."""
    out: str = "outputs/plan.json"
    """Where the plan goes (JSON)."""
    token_budget: int | None = PLAN_TOKEN_BUDGET
    """A batch of more than one request holds at most token_budget // max_new_tokens of them."""
    prompt_tokens: int = 64
    """Prompt length assumed by the time estimate (printed when the trace has true lengths) and by tuning."""
    cost: str | None = None
    """A step-cost JSON: a cache file of `seqsched serve`/`bench` ($SEQSCHED_CACHE/step-cost/*.json), a measured
    grid, or the linear model's fields (default: a linear fit of SmolLM2-135M on this project's CPU)."""
    tune_lengths: str | None = None
    """A held-out trace of the same predictor (JSONL {id, predicted, true}): margin, bin width and VBS are tuned by
    simulation on --lengths' predictions with those errors resampled onto them, before planning; when the tuned
    schedule is not predicted to beat vanilla by min_gain, the plan is vanilla batches."""
    tune_draws: int = 4
    """Draws of true lengths per request when tuning (each candidate's time is the mean over them)."""
    min_gain: float = 0.05
    """The tuned schedule must be predicted this much faster than vanilla (batch_size, input order)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 0, "prompt_tokens")


@dataclass
class Trace:
    """A length trace: ids, predicted lengths and (when every line has one) true lengths."""

    ids: list[str]
    predicted: list[int]
    true: list[int] | None


def _check_length(value: object, key: str, path: Path, number: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(path, number, f"{key!r} must be an integer >= 0, got {value!r}")
    return value


def read_trace(path: str | Path) -> Trace:
    """Read a trace; a clear error naming the line for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "no such trace file (JSONL lines of {id, predicted, true})")
    raw = read_utf8(path)
    text = raw.strip()
    try:  # one parse of the whole file is several times faster than a parse per line
        records = json.loads("[" + text.replace("\n", ",") + "]")
        if len(records) != text.count("\n") + 1:
            raise ValueError("a line holds more than one value")
        numbers: Sequence[int] = range(1, len(records) + 1)
    except ValueError:  # blank lines or a bad one: go line by line to name it
        lines = raw.splitlines()
        numbers = [number for number, line in enumerate(lines, start=1) if line.strip()]
        records = []
        for number in numbers:
            try:
                records.append(json.loads(lines[number - 1]))
            except json.JSONDecodeError as error:
                raise InputError(path, number, f"invalid JSON ({error.msg}, column {error.colno})") from None
    if not records:
        raise InputError(path, None, "the trace is empty")
    try:  # the common case, checked in bulk; anything odd falls through to the line-by-line check below
        ids = [record["id"] for record in records]
        predicted = [record["predicted"] for record in records]
        has_true = sum("true" in record for record in records)
        true = [record["true"] for record in records] if has_true == len(records) else []
        values = predicted + true
        if (
            set(map(type, ids)) == {str}
            and set(map(type, values)) == {int}
            and min(values) >= 0
            and (has_true in (0, len(records)))
            and len(set(ids)) == len(ids)
        ):
            return Trace(ids, predicted, true or None)
    except (KeyError, TypeError):
        pass
    return _check_records(path, numbers, records)


def _check_records(path: Path, numbers: Sequence[int], records: Sequence[object]) -> Trace:
    """The slow path: find the first bad line and say what is wrong with it."""
    ids: list[str] = []
    predicted: list[int] = []
    true: list[int] = []
    seen: set[str] = set()
    for number, record in zip(numbers, records, strict=True):
        if not isinstance(record, dict):
            raise InputError(path, number, "each line must be a JSON object {id, predicted, true}")
        key = record.get("id")
        if not isinstance(key, str):
            raise InputError(path, number, f"'id' must be a string, got {key!r}")
        if key in seen:
            raise InputError(path, number, f"duplicate id {key!r}")
        seen.add(key)
        if "predicted" not in record:
            raise InputError(path, number, "missing 'predicted'")
        ids.append(key)
        predicted.append(_check_length(record["predicted"], "predicted", path, number))
        if "true" in record:
            true.append(_check_length(record["true"], "true", path, number))
    if true and len(true) != len(ids):
        raise InputError(path, None, f"'true' is on {len(true)} of {len(ids)} lines: give it on every line or none")
    return Trace(ids, predicted, true or None)


def build_plan(trace: Trace, cfg: ScheduleConfig) -> tuple[list[Batch], list[Batch]]:
    """The initial batches and, when the trace has true lengths, the recompute batches."""
    initial = plan_batches(trace.predicted, cfg)
    if trace.true is None:
        return initial, []
    limits = [cfg.limit] * len(trace.ids)
    failed = failed_requests(initial, trace.true, limits)
    if cfg.recompute is RecomputeMode.CONTINUE:
        kept = {
            index: engine_steps(batch.max_new_tokens, [cfg.limit]) for batch in initial for index in batch.request_ids
        }
        remaining = {index: cfg.limit - min(kept[index], cfg.limit - 1) for index in failed}
    else:
        remaining = None  # from scratch: the full limit
    caps = {index: batch.max_new_tokens for batch in initial for index in batch.request_ids}
    return initial, recompute_plan(failed, cfg, remaining, failed_caps=caps, predicted=trace.predicted)


def plan_document(strategy: str, ids: Sequence[str], batches: Sequence[Batch]) -> dict[str, object]:
    """The plan as the contract's JSON object."""
    return {
        "strategy": strategy,
        "batches": [
            {
                "phase": batch.phase.value,
                "ids": [ids[index] for index in batch.request_ids],
                "max_new_tokens": batch.max_new_tokens,
            }
            for batch in batches
        ],
    }


def write_plan(path: str | Path, document: dict[str, object]) -> Path:
    """Write the plan compactly and atomically (a million ids stay a few MB)."""
    return write_json(path, document, compact=True)


def load_cost(path: str | None) -> CostModel:
    """A cost model from a JSON file (a measured grid, a cache file or linear fields; default: the built-in one)."""
    if path is None:
        return StepCost()
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
        return cost_from_dict(values, path)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise SeqschedError(
            f"{path}: not a step-cost JSON (a measured grid, or fields {sorted(StepCost.__dataclass_fields__)}): "
            f"{error}"
        ) from error


def tune_plan(trace: Trace, config: PlanConfig, cost: CostModel) -> ScheduleConfig:
    """The schedule tuned on the trace's predictions with the held-out trace's errors, or vanilla when it is not
    predicted to win (prints the decision)."""
    assert config.tune_lengths is not None
    cfg = config.schedule()
    require(config.tune_draws >= 1, "tune_draws", f"must be >= 1, got {config.tune_draws}")
    held_out = read_trace(config.tune_lengths)
    if held_out.true is None:
        raise InputError(config.tune_lengths, None, "a tuning trace needs 'true' lengths on every line")
    if not cfg.binned:
        print(f"--tune_lengths: strategy {cfg.strategy.value} has no bins or batch sizes to tune; planning as given")
        return cfg
    errors = ErrorModel.fit(held_out.predicted, held_out.true)
    workload = draw_workload(trace.predicted, config.prompt_tokens, errors, cfg.limit, draws=config.tune_draws)
    decision = decide(workload, cfg, vanilla_config(cfg, cfg.batch_size), cost, config.min_gain)
    print(f"tuned on {len(held_out.ids)} held-out (predicted, true) pairs: {decision.describe()}")
    return decision.config


def estimate(
    trace: Trace, cfg: ScheduleConfig, initial: list[Batch], recompute: list[Batch], cost: CostModel, prompt_tokens: int
) -> dict[str, float]:
    """Predicted cost of the plan on the trace's true lengths (serving.policy.simulate's engine model)."""
    assert trace.true is not None
    if cfg.recompute is RecomputeMode.CONTINUE:
        summary = simulate(trace.predicted, trace.true, cfg, cost, prompt_tokens=prompt_tokens).summary()
    else:  # the plan's own batches, not a second planning pass
        limits = [cfg.limit] * len(trace.ids)
        first, _ = simulate_batches(initial, trace.true, limits, cost, prompt_tokens=prompt_tokens)
        second, _ = simulate_batches(recompute, trace.true, limits, cost, prompt_tokens=prompt_tokens)
        row_steps = first.row_steps + second.row_steps
        useful = sum(map(min, trace.true, itertools.repeat(cfg.limit)))
        time_s = first.time_s + second.time_s
        summary = {
            "effective_token_ratio": useful / row_steps if row_steps else 0.0,
            "recompute_share": second.row_steps / row_steps if row_steps else 0.0,
            "time_s": time_s,
            "samples_per_s": len(trace.ids) / time_s if time_s else 0.0,
        }
    return {key: float(summary[key]) for key in ("effective_token_ratio", "recompute_share", "time_s", "samples_per_s")}


def plan(config: PlanConfig) -> Path:
    """`seqsched plan`: read the trace, write the plan, print its summary (and simulated cost)."""
    if not config.lengths:
        raise SeqschedError("--lengths is required (a JSONL trace of {id, predicted, true})")
    check_writable(config.out, "out")
    started = time.perf_counter()
    trace = read_trace(config.lengths)
    cost = load_cost(config.cost)
    cfg = tune_plan(trace, config, cost) if config.tune_lengths else config.schedule()
    initial, recompute = build_plan(trace, cfg)
    path = write_plan(config.out, plan_document(cfg.strategy.value, trace.ids, [*initial, *recompute]))
    elapsed = time.perf_counter() - started
    row: dict[str, object] = {
        "strategy": cfg.strategy.value,
        "requests": len(trace.ids),
        "initial_batches": len(initial),
        "recompute_batches": len(recompute),
        "recomputed": sum(len(batch) for batch in recompute),
    }
    if trace.true is not None:
        row |= estimate(trace, cfg, initial, recompute, cost, config.prompt_tokens)
    print(table([row]))
    print(f"plan: {path} ({elapsed:.2f}s)")
    return path
