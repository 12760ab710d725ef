"""Measure an engine's step cost over a grid of batch sizes x context lengths, fit it, check the fit, cache it.

The grid (`measure_grid`) times one static batch per (batch size, context length) through the Engine protocol:
prompts cut from a filler text to `context - steps / 2` tokens, `steps` decode steps (so the decode forwards run
around the nominal context), after an untimed warm-up. Contexts run geometrically from `min_context` to the limit
plus the longest prompt served, batch sizes geometrically up to 256; a probe above `probe_tokens` KV tokens
(batch x context) is skipped (its prefill alone would take long on a CPU) except for the two smallest batch sizes
of each context, and the table extrapolates beyond the probed sizes from the last two points.

Two models are fitted to the same points (`fit_models`): the table itself (serving.policy.stepcost.GridStepCost,
linear interpolation in batch then context) and a least-squares formula with batch x context terms
(serving.policy.stepcost.StepCost). Each is checked leave-one-out: every point is predicted from the others (an
edge point by extrapolation, as the tuner uses the model), and the model with the lower mean relative decode error
serves.

Cost on this project's CPU (SmolLM2-135M fp32, limit 256, prompts up to ~64 tokens: contexts 32, 101 and 320,
24 probes): about 81k prefill tokens and 72 decode forwards; ~9 minutes on one torch thread of a machine loaded
with three other jobs (user time 3 min), an estimated 2-3 minutes on 2 idle threads. The result is cached per
machine, model, dtype, device, torch threads and torch version (`$SEQSCHED_CACHE/step-cost/KEY.json`, written
atomically) and measured again only with `--cost.remeasure true` or when the cached grid stops short of the
contexts needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqsched.engines.api import GREEDY, Engine
from seqsched.errors import SeqschedError
from seqsched.files import write_json
from seqsched.model_specs import ModelConfig, default_cache_dir
from serving.policy.stepcost import GridStepCost, StepCost, Table, cost_from_dict

log = logging.getLogger(__name__)

FILLER = (
    "The history of the city begins with a small market town on the river, where traders from the north met "
    "merchants from the south to exchange grain, wool, salt and news. Over the following centuries the town "
    "grew, its walls were rebuilt three times, and its cathedral, begun in stone and finished in brick, "
)
"""Text the measurement prompts are cut from: a continuation rarely ends at once, so batches run their steps."""

CACHE_FORMAT = 2
"""Bumped when the cache file's meaning changes (old files are then measured again). 2: the HF engines write their
KV cache in place (seqsched.engines.kv_cache), so steps cost less than the grids measured before."""
REACH = 1.1
"""A cached grid serves contexts up to 10% beyond its longest (the table extrapolates that far); further, it is
measured again."""
CACHE_ENV = "SEQSCHED_STEP_COST_CACHE"
"""Moves the step-cost cache (default: $SEQSCHED_CACHE/step-cost); the tests point it at a temporary folder."""


@dataclass(frozen=True)
class CostConfig:
    """Where the step cost of the serving engine comes from: a given file, or a measurement cached per machine."""

    file: str | None = None
    """A step-cost JSON (a cache file of this command, a measured grid, or the linear model's fields); default:
    this machine's cached measurement for the model, measured on first use."""
    remeasure: bool = False
    """Measure again even when a cached measurement exists (and replace it)."""
    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    """Batch sizes of the grid."""
    contexts: int = 3
    """Context lengths of the grid, geometric from min_context to the limit plus a long prompt (its 95th
    percentile)."""
    min_context: int = 32
    steps: int = 4
    """Decode steps per probe (the first comes from the prefill, so steps - 1 forwards are timed)."""
    probe_tokens: int = 20480
    """Skip probes whose batch x context exceeds this (beyond it the table extrapolates): keeps the grid short.
    20480 reaches 64 rows at 320 tokens (0.9 GB of SmolLM2 KV cache, well past a CPU's last-level cache, where a
    row's step cost changes regime) and 256 rows at short contexts."""
    trust: float = 2.0
    """No batch may hold more KV tokens (rows x (prompt + cap)) than this multiple of the largest probe's batch x
    context: beyond the measured grid the model only extrapolates, and a bet there is what made scheduling slower
    than vanilla (issue 13). 0 turns it off; a given --token_budget wins."""
    cache_dir: str | None = None
    """Where measurements are cached (default: $SEQSCHED_STEP_COST_CACHE, else $SEQSCHED_CACHE/step-cost or
    ~/.cache/seqsched/models/step-cost)."""


@dataclass(frozen=True)
class StepSample:
    """One timed batch."""

    batch: int
    prompt_tokens: int
    decode_steps: int
    prefill_s: float
    decode_s: float

    @property
    def step_s(self) -> float:
        """Seconds per decode forward (the first step samples from the prefill's logits)."""
        return self.decode_s / max(1, self.decode_steps - 1)

    @property
    def mean_context(self) -> float:
        """The context length in the middle of the decode (forwards at prompt + 1 .. prompt + steps - 1)."""
        return self.prompt_tokens + self.decode_steps / 2


def grid_contexts(min_context: int, max_context: int, count: int) -> list[int]:
    """count context lengths, geometric from min_context to max_context (both included)."""
    if count < 1:
        raise SeqschedError(f"the grid needs at least one context length, got {count}")
    if count == 1 or max_context <= min_context:
        return [max(min_context, max_context)]
    ratio = (max_context / min_context) ** (1 / (count - 1))
    return sorted({round(min_context * ratio**index) for index in range(count)})


def grid_probes(batches: Sequence[int], contexts: Sequence[int], probe_tokens: int) -> list[tuple[int, int]]:
    """(batch, context) pairs to time: every batch size up to probe_tokens KV tokens, and at least the two smallest
    at each context (a row needs two points to extrapolate)."""
    sizes = sorted(set(batches))
    probes = []
    for context in contexts:
        for position, batch in enumerate(sizes):
            if position < 2 or batch * context <= probe_tokens:
                probes.append((batch, context))
    return probes


def _filler_ids(engine: Engine, tokens: int) -> list[int]:
    """Token ids of the filler text repeated until it holds `tokens` (plus the rows' offsets)."""
    repeats = 1
    ids = engine.encode(FILLER)
    while len(ids) < tokens + 8:
        repeats *= 2
        ids = engine.encode(FILLER * repeats)
    return ids


def measure(
    engine: Engine,
    batch_sizes: Sequence[int] = (1, 4, 16, 32, 64),
    prompt_lengths: Sequence[int] = (32, 160),
    steps: int = 16,
    repeats: int = 1,
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    on_probe: Callable[[StepSample], None] | None = None,
) -> list[StepSample]:
    """Time one batch per (batch size, prompt length) — or per pair of `pairs` — `repeats` times, after an
    untimed warm-up."""
    todo = list(pairs) if pairs is not None else [(b, p) for p in prompt_lengths for b in batch_sizes]
    longest = max((prompt for _, prompt in todo), default=8)
    text_ids = _filler_ids(engine, longest)
    engine.generate([text_ids[:8]], 2, GREEDY)  # warm-up: first calls allocate
    engine.generate([text_ids[:32]] * 4, 3, GREEDY)
    samples = []
    for batch, prompt_tokens in todo:
        # Rows start at different offsets so they do not all decode the same continuation.
        prompts = [text_ids[row % 7 : row % 7 + prompt_tokens] for row in range(batch)]
        for _ in range(repeats):
            output = engine.generate(prompts, steps, GREEDY)
            sample = StepSample(batch, prompt_tokens, output.decode_steps, output.prefill_s, output.decode_s)
            log.info("batch %d prompt %d: %.1f ms/step", batch, prompt_tokens, sample.step_s * 1000)
            samples.append(sample)
            if on_probe is not None:
                on_probe(sample)
    return samples


def measure_grid(
    engine: Engine, config: CostConfig, max_context: int, *, progress: bool = False
) -> tuple[list[StepSample], list[int]]:
    """The grid's samples (prompt = context - steps / 2, so decode forwards centre on each context) and its
    contexts."""
    if config.steps < 2:
        raise SeqschedError(f"--cost.steps must be >= 2 (one timed forward at least), got {config.steps}")
    if config.trust < 0:
        raise SeqschedError(f"--cost.trust must be >= 0, got {config.trust}")
    contexts = grid_contexts(config.min_context, max_context, config.contexts)
    probes = grid_probes(config.batches, contexts, config.probe_tokens)
    pairs = [(batch, max(1, context - config.steps // 2)) for batch, context in probes]
    from tqdm import tqdm

    with tqdm(total=len(pairs), desc="step cost grid", unit="probe", disable=not progress) as bar:
        samples = measure(engine, steps=config.steps, pairs=pairs, on_probe=lambda _: bar.update(1))
    return samples, contexts


def decode_points(samples: Sequence[StepSample], steps: int) -> list[tuple[int, float, float]]:
    """(batch, nominal context, seconds per forward): the nominal context (prompt + steps / 2) keeps each grid
    row on one context even when a probe's rows all stopped early."""
    return [(s.batch, s.prompt_tokens + steps / 2, s.step_s) for s in samples if s.decode_steps > 1]


def prefill_points(samples: Sequence[StepSample]) -> list[tuple[int, float, float]]:
    """(batch, prompt tokens, prefill seconds)."""
    return [(s.batch, float(s.prompt_tokens), s.prefill_s) for s in samples]


def fit(samples: Sequence[StepSample]) -> StepCost:
    """Least-squares linear StepCost over the samples (negative coefficients, which noise can produce, become 0)."""
    decode = [sample for sample in samples if sample.decode_steps > 1]
    if len(decode) < 3:
        raise ValueError("need at least 3 samples with more than one decode step to fit a step cost")
    return fit_linear(
        [(s.batch, s.mean_context, s.step_s) for s in decode],
        [(s.batch, float(s.prompt_tokens), s.prefill_s) for s in samples],
    )


def _lstsq(rows: list[list[float]], target: list[float]) -> list[float]:
    import numpy as np

    design = np.array(rows, dtype=float)
    goal = np.array(target, dtype=float)
    # Relative error matters (a 5 ms step and a 2 s step alike): weight each point by 1 / its value.
    weights = 1.0 / np.maximum(goal, 1e-9)
    solution = np.linalg.lstsq(design * weights[:, None], goal * weights, rcond=None)[0]
    return [max(0.0, float(value)) for value in solution]


def fit_linear(decode: Sequence[tuple[int, float, float]], prefill: Sequence[tuple[int, float, float]]) -> StepCost:
    """The linear model through (batch, context, s) decode points and (batch, prompt, s) prefill points: decode
    terms fixed, batch, context, batch x context; prefill terms fixed, batch, batch x prompt (relative least
    squares; a term only when the points can tell it apart)."""
    contexts = {context for _, context, _ in decode}
    batches = {batch for batch, _, _ in decode}
    columns = [lambda b, c: 1.0, lambda b, c: float(b)]
    names = ["fixed_s", "per_row_s"]
    if len(contexts) > 1:
        columns.append(lambda b, c: float(b) * c)
        names.append("per_context_s")
        if len(batches) > 1:
            columns.append(lambda b, c: c)
            names.append("context_s")
    values = _lstsq([[column(b, c) for column in columns] for b, c, _ in decode], [s for _, _, s in decode])
    fitted = dict(zip(names, values, strict=True))
    prefill_values = _lstsq([[1.0, float(b), b * p] for b, p, _ in prefill], [s for _, _, s in prefill])
    return StepCost(
        fixed_s=fitted["fixed_s"],
        per_row_s=fitted["per_row_s"],
        per_context_s=fitted.get("per_context_s", 0.0),
        context_s=fitted.get("context_s", 0.0),
        prefill_fixed_s=prefill_values[0],
        prefill_row_s=prefill_values[1],
        prefill_token_s=prefill_values[2],
    )


def fit_grid(
    decode: Sequence[tuple[int, float, float]], prefill: Sequence[tuple[int, float, float]], source: str = ""
) -> GridStepCost:
    """The measured table itself."""
    return GridStepCost(Table(tuple(decode)), Table(tuple(prefill)), source)


@dataclass
class FitCheck:
    """Leave-one-out errors of a model: each point predicted from all the others."""

    decode: list[float] = field(default_factory=list)
    """Relative error per decode point (predicted / measured - 1)."""
    prefill: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Mean and worst absolute relative errors."""
        out = {}
        for name, errors in (("decode", self.decode), ("prefill", self.prefill)):
            magnitudes = [abs(error) for error in errors] or [math.nan]
            out[f"{name}_mean_abs_error"] = statistics.fmean(magnitudes)
            out[f"{name}_median_abs_error"] = statistics.median(magnitudes)
            out[f"{name}_max_abs_error"] = max(magnitudes)
        return out


def leave_one_out(
    decode: Sequence[tuple[int, float, float]],
    prefill: Sequence[tuple[int, float, float]],
    builder: Callable[[Sequence[tuple[int, float, float]], Sequence[tuple[int, float, float]]], Any],
) -> FitCheck:
    """Every point predicted by the model built from the others (points whose row would be left empty are
    skipped: the table cannot read a context it has no point at)."""
    check = FitCheck()
    for kind, points, errors in (("decode", decode, check.decode), ("prefill", prefill, check.prefill)):
        for position, (batch, length, seconds) in enumerate(points):
            rest = [point for index, point in enumerate(points) if index != position]
            if not any(other[1] == length for other in rest) or seconds <= 0:
                continue
            model = builder(rest, prefill) if kind == "decode" else builder(decode, rest)
            predicted = model.step_s(batch, length) if kind == "decode" else model.prefill_s(batch, int(length))
            errors.append(predicted / seconds - 1.0)
    return check


@dataclass
class Measured:
    """A step-cost measurement: the model chosen, both fits, their checks and the raw points."""

    cost: StepCost | GridStepCost
    document: dict[str, Any]
    path: Path | None
    """The cache file it was read from or written to."""
    reused: bool
    """True when read from the cache, False when measured now."""

    @property
    def region_tokens(self) -> int | None:
        """The largest batch x context the grid measured (None when only a formula was given)."""
        if isinstance(self.cost, GridStepCost):
            points = [list(point) for point in self.cost.decode.points]
        elif isinstance(self.document.get("grid"), dict):
            points = self.document["grid"]["decode"]
        else:
            return None
        return int(max(batch * context for batch, context, _ in points))

    @property
    def chosen(self) -> str:
        """grid or linear: the model that serves."""
        return "grid" if isinstance(self.cost, GridStepCost) else "linear"


def fit_models(samples: Sequence[StepSample], steps: int, source: str = "") -> dict[str, Any]:
    """Both models fitted to the samples, their leave-one-out checks, and which one serves (the lower mean
    relative decode error)."""
    decode = decode_points(samples, steps)
    prefill = prefill_points(samples)
    grid = fit_grid(decode, prefill, source)
    linear = fit_linear(decode, prefill)
    checks = {
        "grid": leave_one_out(decode, prefill, fit_grid).summary(),
        "linear": leave_one_out(decode, prefill, fit_linear).summary(),
    }
    grid_error = checks["grid"]["decode_mean_abs_error"]
    linear_error = checks["linear"]["decode_mean_abs_error"]
    chosen = "linear" if linear_error < grid_error else "grid"  # NaN (too few points) keeps the grid
    return {"model": chosen, "grid": grid.to_dict(), "linear": linear.to_dict(), "leave_one_out": checks}


def machine_name() -> str:
    """A one-line description of this machine: the GPU when torch sees one, else the CPU model and core count."""
    import platform

    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name}, {os.cpu_count()} cores"


def cache_identity(model: ModelConfig, engine_kind: str) -> dict[str, Any]:
    """What a measurement depends on: machine, model, device, dtype, torch threads and versions, engine."""
    import torch

    from seqsched.model_specs import pick_device, pick_dtype

    device = pick_device(model.device)
    # A random-weight model (length replay) costs what its architecture costs, not what `spec` (its tokenizer) does.
    random_init = {"random_init": model.random_init} if model.random_init is not None else {}
    return {
        "format": CACHE_FORMAT,
        "machine": machine_name(),
        "model": model.spec,
        **random_init,
        "device": device.type,
        "dtype": str(pick_dtype(model.dtype, device)).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "engine": engine_kind,
    }


def cache_path(identity: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    """The cache file of a measurement identity: readable prefix, then a hash of the whole identity."""
    override = os.environ.get(CACHE_ENV)
    root = Path(cache_dir) if cache_dir else Path(override) if override else default_cache_dir() / "step-cost"
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    model = Path(str(identity.get("random_init") or identity["model"])).name.replace(" ", "_") or "model"
    return root / f"{model}-{identity['device']}-{identity['dtype']}-t{identity['torch_threads']}-{digest}.json"


def _read_cache(path: Path, identity: dict[str, Any], max_context: int, max_batch: int) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if document.get("identity") != identity:
        return None
    measured = max((int(sample.get("batch", 0)) for sample in document.get("samples", [])), default=0)
    if measured < max_batch:  # measured on an engine that ran fewer rows at once (vLLM's max_num_seqs)
        log.info("cached step cost %s stops at batch %d < %d: measuring again", path, measured, max_batch)
        return None
    if int(document.get("max_context", 0)) * REACH < max_context:
        log.info(
            "cached step cost %s stops at context %s < %d: measuring again", path, document["max_context"], max_context
        )
        return None
    return document


def load_cost_file(path: str | Path) -> StepCost | GridStepCost:
    """A cost model from a JSON file (a cache file, a grid or linear fields); a one-line error otherwise."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
        return cost_from_dict(values, str(path))
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise SeqschedError(f"{path}: not a step-cost JSON ({error})") from error


def load_or_measure(
    engine: Engine,
    model: ModelConfig,
    engine_kind: str,
    config: CostConfig,
    max_context: int,
    *,
    progress: bool = False,
) -> Measured:
    """The engine's cost model: config.file if given, else this machine's cached measurement, else a new
    measurement over the grid up to max_context (written to the cache)."""
    if config.file:
        return Measured(load_cost_file(config.file), {"file": config.file}, Path(config.file), True)
    identity = cache_identity(model, engine_kind)
    path = cache_path(identity, config.cache_dir)
    # The largest batch this grid would time: a cache measured on an engine that ran fewer rows at once is not enough.
    contexts = grid_contexts(config.min_context, max_context, config.contexts)
    max_batch = max((batch for batch, _ in grid_probes(config.batches, contexts, config.probe_tokens)), default=0)
    document = None if config.remeasure else _read_cache(path, identity, max_context, max_batch)
    if document is not None:
        return Measured(cost_from_dict(document, str(path)), document, path, True)
    print(f"measuring the step cost over batch sizes x contexts up to {max_context} tokens (once; cached in {path})")
    started = time.perf_counter()
    samples, contexts = measure_grid(engine, config, max_context, progress=progress)
    document = {
        "identity": identity,
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "measure_s": time.perf_counter() - started,
        "max_context": max_context,
        "contexts": contexts,
        "steps": config.steps,
        "probe_tokens": config.probe_tokens,
        **fit_models(samples, config.steps, str(path)),
        "samples": [sample.__dict__ for sample in samples],
    }
    write_json(path, document)
    checks = document["leave_one_out"]
    print(
        f"step cost measured in {document['measure_s']:.0f} s ({len(samples)} probes); leave-one-out mean decode "
        f"error: grid {checks['grid']['decode_mean_abs_error']:.1%}, linear "
        f"{checks['linear']['decode_mean_abs_error']:.1%} -> {document['model']}"
    )
    return Measured(cost_from_dict(document, str(path)), document, path, False)


def report(samples: Sequence[StepSample], cost: Any) -> list[dict[str, float | int]]:
    """Measured vs modelled step time per sample."""
    return [
        {
            "batch": sample.batch,
            "prompt_tokens": sample.prompt_tokens,
            "decode_steps": sample.decode_steps,
            "measured_step_ms": round(sample.step_s * 1000, 2),
            "fitted_step_ms": round(cost.step_s(sample.batch, sample.mean_context) * 1000, 2),
            "measured_per_row_ms": round(sample.step_s * 1000 / sample.batch, 3),
            "prefill_s": round(sample.prefill_s, 3),
            "fitted_prefill_s": round(cost.prefill_s(sample.batch, sample.prompt_tokens), 3),
        }
        for sample in samples
    ]


__all__ = [
    "CostConfig",
    "Measured",
    "StepSample",
    "fit",
    "fit_models",
    "leave_one_out",
    "load_cost_file",
    "load_or_measure",
    "measure",
    "measure_grid",
    "report",
]
