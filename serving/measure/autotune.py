"""What `serve`, `bench` and the demo do before serving a set of requests on a static-batch engine: size the
KV-cache budget, get this machine's step cost (cached), learn the predictor's errors on held-out data, then tune
the schedule on the requests being served and fall back to vanilla batches when it is not predicted to win
(the pure parts: serving.policy.workload, serving.policy.tuning, serving.policy.simulate)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from seqsched.engines.api import Batching, Engine
from seqsched.engines.pool_rules import DEFAULT_RESERVE
from seqsched.errors import SeqschedError
from seqsched.model_specs import ModelConfig
from seqsched.requests import Request
from serving.measure.costmodel import CostConfig, Measured, load_or_measure
from serving.measure.memory import KVBudget, MemoryConfig, kv_budget
from serving.policy.scheduler import ScheduleConfig
from serving.policy.simulate import SimResult, simulate
from serving.policy.simulate_kv import KVEngine, LengthStats
from serving.policy.stepcost import CostModel, StepCost
from serving.policy.workload import Decision, ErrorModel, TuneConfig, decide, draw_workload, vanilla_config
from serving.predictors import RequestPredictor


def prompt_lengths(engine: Engine, requests: Sequence[Request]) -> list[int]:
    """Each request's prompt tokens as the engine feeds it (chat template applied)."""
    return [len(engine.encode(request.chat())) for request in requests]


def own_limits(requests: Sequence[Request], limit: int) -> list[int]:
    """Each request's own cap: the limit, lowered by its max_tokens (as serving.runner does)."""
    return [min(limit, request.max_tokens or limit) for request in requests]


def grid_max_context(limit: int, prompts: Sequence[int]) -> int:
    """The longest context the grid must reach: the limit plus a long prompt (the 95th percentile: one outlier
    should not double the measurement; the table extrapolates beyond)."""
    if not prompts:
        return limit + 64
    ordered = sorted(prompts)
    return limit + ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def supports_quantiles(predictor: RequestPredictor | None, tune: TuneConfig) -> bool:
    """True when quantiles were asked for and the predictor gives a length distribution."""
    return bool(tune.quantiles) and bool(getattr(predictor, "quantiles_supported", False))


def held_out_errors(
    predictor: RequestPredictor, tune: TuneConfig
) -> tuple[ErrorModel, dict[float, ErrorModel], dict[str, Any]]:
    """The predictor's errors on the held-out requests (tune.data: a length dataset, its max lengths; tune.lengths:
    a lengths file, no datasets library), by predicted-length bin; with quantiles (and a predictor that has them),
    the errors of each quantile's lengths too."""
    started = time.perf_counter()
    if tune.lengths:
        held_out, true, source = _held_out_from_lengths(tune.lengths, tune.start, tune.limit)
    else:
        from lengthpred.data import load_length_data

        assert tune.data is not None
        data = load_length_data(tune.data, tune.split, tune.start, tune.limit)
        held_out = [Request(id=key, prompt=prompt) for key, prompt in zip(data.ids, data.prompts, strict=True)]
        true, source = list(data.max_lengths), data.source
    by_quantile: dict[float, ErrorModel] = {}
    if supports_quantiles(predictor, tune):
        lengths = predictor.predict_quantiles(held_out, tune.quantiles)  # type: ignore[attr-defined]
        by_quantile = {q: ErrorModel.fit(values, true) for q, values in lengths.items()}
    predicted = predictor.predict_requests(held_out)
    release = getattr(predictor, "release", None)
    if release is not None:
        release()  # a probe sharing the serving prefill kept the held-out prompts' caches: not needed
    errors = ErrorModel.fit(predicted, true)
    stats = LengthStats.of(true)
    info = {
        "data": source,
        "records": len(held_out),
        "errors": errors.summary(),
        "lengths": {"mean": stats.mean, "stdev": stats.stdev},
        "s": time.perf_counter() - started,
    }
    if by_quantile:
        info["quantiles"] = {str(q): model.summary() for q, model in by_quantile.items()}
    return errors, by_quantile, info


def _held_out_from_lengths(path: str, start: int, limit: int | None) -> tuple[list[Request], list[int], str]:
    """Requests (ids, and prompts when the file has them) and true lengths of a lengths file's slice."""
    from seqsched.length_files import read_length_records

    records = read_length_records(path)[start:]
    records = records if limit is None else records[:limit]
    if not records:
        raise SeqschedError(f"--tune.lengths {path}: no records (after --tune.start {start})")
    requests = [Request(id=record.id, prompt=record.prompt or "") for record in records]
    return requests, [record.length for record in records], path


@dataclass
class Tuner:
    """What tuning needs, prepared once per run: the step cost, the KV budget and (for a predictor) its errors."""

    cost: CostModel
    budget: KVBudget
    tune: TuneConfig
    errors: ErrorModel | None = None
    evict_finished: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    errors_by_quantile: dict[float, ErrorModel] = field(default_factory=dict)
    """Held-out errors of each quantile's lengths (tune.quantiles with a predictor that gives distributions)."""

    @property
    def length_stats(self) -> LengthStats | None:
        """The held-out set's true lengths (mean, standard deviation), None without one."""
        lengths = (self.info.get("held_out") or {}).get("lengths")
        return None if lengths is None else LengthStats(float(lengths["mean"]), float(lengths["stdev"]))

    def apply_budget(self, cfg: ScheduleConfig) -> ScheduleConfig:
        """cfg with the run's token budget (a given one stays)."""
        if cfg.token_budget is not None or self.budget.tokens is None:
            return cfg
        return replace(cfg, token_budget=self.budget.tokens)

    def decide(
        self,
        predicted: Sequence[int],
        prompts: Sequence[int],
        limits: Sequence[int],
        start: ScheduleConfig,
        vanilla_batch_size: int,
        *,
        exact: bool = False,
    ) -> Decision:
        """Tune start on these requests (true lengths drawn from the held-out errors, or the predictions themselves
        when exact) and choose between the schedule and vanilla batches."""
        errors = ErrorModel.exact() if exact else self.errors
        if errors is None:
            raise ValueError("tuning needs held-out errors (--tune.data or --tune.lengths) or exact lengths")
        return self._decide(predicted, errors, prompts, limits, start, vanilla_batch_size)

    def _decide(
        self,
        predicted: Sequence[int],
        errors: ErrorModel,
        prompts: Sequence[int],
        limits: Sequence[int],
        start: ScheduleConfig,
        vanilla_batch_size: int,
    ) -> Decision:
        start = self.apply_budget(start)
        workload = draw_workload(
            predicted,
            prompts,
            errors,
            start.limit,
            limits=limits,
            draws=self.tune.draws,
            seed=self.tune.seed,
            evict_finished=self.evict_finished,
        )
        return decide(workload, start, vanilla_config(start, vanilla_batch_size), self.cost, self.tune.min_gain)

    def decide_quantiles(
        self,
        lengths: dict[float, Sequence[int]],
        prompts: Sequence[int],
        limits: Sequence[int],
        start: ScheduleConfig,
        vanilla_batch_size: int,
    ) -> tuple[float, Decision]:
        """Tune each quantile's lengths on its own held-out errors; the quantile whose schedule is predicted
        fastest, and its decision (the others' simulated times in details['quantiles'])."""
        decisions = {
            q: self._decide(predicted, self.errors_by_quantile[q], prompts, limits, start, vanilla_batch_size)
            for q, predicted in lengths.items()
        }
        best = min(decisions, key=lambda q: decisions[q].scheduled_s)
        chosen = decisions[best]
        chosen.details["quantile"] = best
        chosen.details["quantiles"] = {str(q): item.scheduled_s for q, item in decisions.items()}
        chosen.tuning_s = sum(item.tuning_s for item in decisions.values())
        return best, chosen

    def simulate_run(
        self,
        predicted: Sequence[int] | None,
        true: Sequence[int],
        prompts: Sequence[int],
        limits: Sequence[int],
        cfg: ScheduleConfig,
    ) -> SimResult:
        """What the cost model predicts a run with this config costs on the true lengths."""
        guesses = list(predicted) if predicted is not None else [0] * len(true)
        return simulate(
            guesses, true, cfg, self.cost, limits=limits, prompt_tokens=prompts, evict_finished=self.evict_finished
        )


def prepare_tuner(
    engine: Engine,
    model: ModelConfig,
    engine_kind: str,
    evict_finished: bool,
    cost: CostConfig,
    memory: MemoryConfig,
    tune: TuneConfig,
    token_budget: int | None,
    limit: int,
    prompts: Sequence[int],
    predictor: RequestPredictor | None = None,
    *,
    progress: bool = False,
) -> Tuner:
    """Measure (or read the cached) step cost up to the contexts these prompts need, size the KV budget, and
    learn the predictor's held-out errors when tune.data or tune.lengths is given."""
    budget = kv_budget(token_budget, memory, model)
    measured: Measured = load_or_measure(
        engine, model, engine_kind, cost, grid_max_context(limit, prompts), progress=progress
    )
    region = measured.region_tokens
    if token_budget is None and cost.trust > 0 and region is not None:
        trusted = int(cost.trust * region)
        if budget.tokens is None or trusted < budget.tokens:
            memory_note = f"; memory allows {budget.tokens:,}" if budget.tokens is not None else ""
            source = f"{cost.trust:g}x the largest measured batch x context, {region:,}{memory_note}"
            budget = KVBudget(trusted, source, budget.bytes_per_token, budget.free_bytes)
    print(budget.describe())
    info: dict[str, Any] = {
        "step_cost": {
            "source": str(measured.path),
            "model": measured.chosen,
            "reused": measured.reused,
            "leave_one_out": measured.document.get("leave_one_out"),
            "measure_s": measured.document.get("measure_s"),
            "region_tokens": region,
        },
        "kv_budget": budget.as_dict(),
    }
    errors, by_quantile = None, {}
    if tune.held_out and predictor is not None:
        errors, by_quantile, info["held_out"] = held_out_errors(predictor, tune)
        print(f"held-out errors: {info['held_out']['records']} records of {info['held_out']['data']}")
    return Tuner(measured.cost, budget, tune, errors, evict_finished, info, by_quantile)


def tuner_for(
    config: Any,
    engine: Engine,
    prompts: Sequence[int],
    predictor: RequestPredictor | None = None,
    tune: TuneConfig | None = None,
) -> Tuner:
    """prepare_tuner from a command's config (serve's, bench's: model, engine, cost, memory, tune, token_budget,
    limit, progress); tune overrides the config's."""
    return prepare_tuner(
        engine,
        config.model,
        getattr(engine, "engine_kind", "hf"),
        config.engine.evict_finished,
        config.cost,
        config.memory,
        config.tune if tune is None else tune,
        config.token_budget,
        config.limit,
        prompts,
        predictor,
        progress=config.progress,
    )


def budget_only(config: Any) -> Tuner:
    """A tuner that only knows the KV budget (no step cost measured, no errors: no decisions)."""
    budget = kv_budget(config.token_budget, config.memory, config.model)
    print(budget.describe())
    return Tuner(StepCost(), budget, config.tune)


__all__ = [
    "UNBOUNDED_KV_TOKENS",
    "Tuner",
    "all_at_once",
    "budget_only",
    "continuous_model",
    "cost_engine",
    "engine_cost_config",
    "grid_max_context",
    "held_out_errors",
    "own_limits",
    "pool_model",
    "prepare_tuner",
    "prompt_lengths",
    "supports_quantiles",
    "tuner_for",
]


def kv_model(engine: Engine) -> KVEngine | None:
    """What the KV simulator assumes of a continuous engine with a bounded KV cache: vLLM (paged, chunked prefill,
    recompute on resume) or our pool with a KV budget (KVEngine.pool: by the token, padded prefills and steps,
    restart on resume); None for an engine without a KV bound."""

    tokens = getattr(engine, "kv_cache_tokens", None)
    if tokens is not None:  # vLLM
        config = engine.llm.llm_engine.vllm_config  # type: ignore[attr-defined]
        return KVEngine(
            kv_tokens=int(tokens),
            max_seqs=int(config.scheduler_config.max_num_seqs),
            block_size=int(config.cache_config.block_size),
            max_batched_tokens=int(config.scheduler_config.max_num_batched_tokens),
        )
    budget = getattr(engine, "kv_budget_tokens", None)
    if budget is not None:  # our pool
        return pool_model(engine, int(budget))
    return None


def all_at_once(
    engine: Engine, prompts: Sequence[int], budgets: Sequence[int], lengths: LengthStats | None = None
) -> str | None:
    """Why ordering requests by predicted length cannot change a run on this continuous engine, or None when it can:
    every request is admitted at the start and runs to its end beside all the others (no more than the engine's
    sequences, KV for every final context at once: serving.policy.simulate_kv.KVEngine.holds_all, with whole
    budgets, or with `lengths`, a held-out set's, the expected total). Then a predictor only costs its time
    (measured: vLLM serving 256 prompts at once, shortest-predicted-first 0.94x FCFS's samples/s, the probe's 8.9 s
    included; with the true lengths 1.03x), so the run serves FCFS without predicting. None for a static engine
    (its batches are what the predictions shape)."""
    if engine.batching is not Batching.CONTINUOUS or not prompts:
        return None
    count = len(prompts)
    model = kv_model(engine)
    if model is None:  # our pool without a KV budget: its slots alone bound it
        slots = getattr(engine, "slots", None)
        if slots is None or count > slots:
            return None
        return f"all {count} requests run at once ({count} <= {slots} sequences)"
    if not model.holds_all(prompts, budgets, lengths):
        return None
    needed = model.needed_tokens(prompts, budgets, lengths)
    expected = "" if lengths is None else f" expected by held-out lengths (mean {lengths.mean:.0f})"
    return (
        f"all {count} requests run at once ({count} <= {model.max_seqs} sequences, {needed:,} KV tokens{expected} "
        f"of {model.total_blocks * model.block_size:,})"
    )


UNBOUNDED_KV_TOKENS = 1 << 40
"""The KV cache the simulator gives our pool without a KV budget (its slots alone bound it)."""


def continuous_model(engine: Engine) -> KVEngine | None:
    """What the KV simulator assumes of a continuous engine: kv_model's, or for our pool without a KV budget its
    slots alone (KVEngine.pool); None for a static engine."""
    model = kv_model(engine)
    slots = getattr(engine, "slots", None)
    if model is not None or engine.batching is not Batching.CONTINUOUS or slots is None:
        return model
    return pool_model(engine, UNBOUNDED_KV_TOKENS)


def pool_model(engine: Engine, kv_tokens: int) -> KVEngine:
    """Our pool as the KV simulator models it (KVEngine.pool): the engine's slots, admit_min, spare columns and
    measured cost of copying its cache."""
    return KVEngine.pool(
        kv_tokens,
        int(engine.slots),  # type: ignore[attr-defined]
        getattr(engine, "admit_min", None),
        float(getattr(engine, "copy_slot_s", 0.0)),
        int(getattr(engine, "reserve", DEFAULT_RESERVE)),
    )


def engine_cost_config(engine: Engine, cost: CostConfig) -> CostConfig:
    """The step-cost grid a KV-bounded engine can time: probes within half its KV cache (none preempted) and, on
    vLLM, no larger batch than it runs at once (max_num_seqs); the grid as configured elsewhere."""
    model = kv_model(engine)
    if model is None:
        return cost
    cost = replace(cost, probe_tokens=min(cost.probe_tokens, model.kv_tokens // 2))
    if getattr(engine, "engine_kind", "hf") != "vllm" or max(cost.batches) <= model.max_seqs:
        return cost
    batches = tuple(batch for batch in cost.batches if batch < model.max_seqs)
    return replace(cost, batches=(*batches, model.max_seqs))


def cost_engine(engine: Engine) -> Engine:
    """The engine whose step cost the simulator needs, as a static engine the cost grid can time: vLLM through its
    step timer, our pool through its static view."""
    if getattr(engine, "engine_kind", "hf") == "vllm":
        from seqsched.engines.vllm import VLLMStepTimer

        return VLLMStepTimer(engine)  # type: ignore[arg-type]
    return getattr(engine, "static", engine)
