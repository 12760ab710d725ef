"""What `seqsched bench` settles before and around its rows: the predicted lengths per source, the policy each row
serves (tuned on the served prompts, or the paper's for @paper rows), the continuous pool, the tuner (step cost,
KV budget, held-out errors) and, under --budget_s, how many prompts fit (replay only: the engine knows every
request's length, so the simulator can time each row before it runs).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from seqsched.engines.api import Batching, Engine, takes_reservations
from seqsched.engines.selection import with_batching
from seqsched.errors import SeqschedError
from seqsched.requests import Request
from serving.bench.rows import BenchRow, BenchStrategy, Source, strategy_config
from serving.measure.autotune import (
    Tuner,
    budget_only,
    continuous_model,
    own_limits,
    prompt_lengths,
    tuner_for,
)
from serving.policy.kv_tuning import KVDecision, KVTuneConfig, decide_kv
from serving.policy.scheduler import ScheduleConfig
from serving.policy.simulate import simulate
from serving.policy.stepcost import CostModel
from serving.policy.workload import Decision, ErrorModel, draw_workload
from serving.predictors import PredictorSource, RequestPredictor, parse_predictor, resolve_predictor

if TYPE_CHECKING:
    from serving.bench import BenchConfig

SIZING_SAFETY = 0.85
"""The share of the time left that the simulated rows may fill (the simulator misses some per-batch overhead)."""
TUNING_CANDIDATES = 1300
"""About how many simulations one tuning decision runs (serving.policy.workload.decide: margin x ratio x bin width x 12
tables, then up to 2 rounds of VBS over ~12 edges x 11 sizes): what budget sizing reserves time for."""


class Predictions:
    """Predicted lengths per source, each prediction timed (it counts in the run's total time)."""

    def __init__(self, engine: Engine, config: BenchConfig, requests: Sequence[Request]) -> None:
        self.engine, self.config, self.requests = engine, config, requests
        self.oracle: list[int] | None = None
        """The true lengths on our engine (vanilla's)."""
        self.vllm_oracle: list[int] | None = None
        """The true lengths on vLLM (vllm-fcfs's: its kernels give other greedy outputs than ours)."""
        self._predictor: RequestPredictor | None = None
        self._perception: RequestPredictor | None = None
        self.last: RequestPredictor | None = None
        self.quantiles: tuple[float, ...] = ()
        """Quantiles to predict at (risk-aware caps: set when the tuner has their held-out errors)."""
        self.quantile_lengths: dict[float, list[int]] = {}
        """The last prediction's lengths at each of those quantiles."""

    def for_requests(self, requests: Sequence[Request]) -> Predictions:
        """The same loaded predictors for another set of requests (the prefix a budget kept)."""
        other = Predictions(self.engine, self.config, requests)
        other._predictor, other._perception = self._predictor, self._perception
        return other

    def predictor(self) -> RequestPredictor:
        """The --predictor, loaded once."""
        if self._predictor is None:
            spec = parse_predictor(self.config.predictor)
            if spec.kind in (PredictorSource.NONE, PredictorSource.PERCEPTION):
                raise SeqschedError(
                    "seqsch, vbs, fcr, cb-sjf and cb-sjf-fcr rows need --predictor (models:/NAME@ALIAS, runs:/..., "
                    "oracle:FILE); fcr-perception, fcr-oracle, cb-fcfs and cb-sjf-oracle rows need none. Drop them "
                    "with --strategies [vanilla,...]"
                )
            loaded = resolve_predictor(spec, self.engine, self.config.tracking_uri)
            assert loaded is not None
            self._predictor = loaded
        return self._predictor

    def get(
        self, source: Source, share_prefill: bool = True, vllm: bool = False
    ) -> tuple[list[int] | None, float, float]:
        """Predicted lengths, seconds the prediction took, and the part of them that prefilled prompts for the
        run (a probe sharing the serving prefill; release() frees those prefills after the run). vllm: the oracle
        is vLLM's own lengths."""
        self.last = None
        if source is Source.NONE:
            return None, 0.0, 0.0
        if source is Source.ORACLE:
            oracle = self.vllm_oracle if vllm else self.oracle
            if oracle is None:
                base = "vllm-fcfs" if vllm else "vanilla"
                raise RuntimeError(f"the oracle's lengths come from {base}'s run, which has not run yet")
            return list(oracle), 0.0, 0.0
        if source is Source.PERCEPTION:
            if self._perception is None:
                self._perception = resolve_predictor("perception", self.engine)
            predictor = self._perception
        else:
            predictor = self.predictor()
        assert predictor is not None
        if hasattr(predictor, "share"):
            predictor.share = share_prefill  # type: ignore[union-attr]  # only the static engine reuses prefills
        started = time.perf_counter()
        if self.quantiles and source is Source.PREDICTOR and getattr(predictor, "quantiles_supported", False):
            self.quantile_lengths = predictor.predict_quantiles(self.requests, self.quantiles)  # type: ignore[attr-defined]
            values = self.quantile_lengths[self.quantiles[0]]  # the tuner picks one (Policies.decision)
        else:
            values = predictor.predict_requests(self.requests)
        self.last = predictor
        return values, time.perf_counter() - started, float(getattr(predictor, "prefill_s", 0.0))

    def release(self) -> None:
        """Free what the last prediction kept for its run (prefilled prompts)."""
        release = getattr(self.last, "release", None)
        if release is not None:
            release()


class Policies:
    """The config each row serves: the fcr row's decision (tuned on the served predictions, vanilla when it does
    not win) shared by seqsch, vbs and fcr-perception; fcr-oracle's own (tuned on the true lengths); the starting
    policy for @paper rows. Decisions are made once and reused by later rounds (same inputs, same answer)."""

    def __init__(
        self,
        config: BenchConfig,
        policy: ScheduleConfig,
        predictions: Predictions | None,
        tuner: Tuner | None,
        prompts: list[int],
        limits: list[int],
    ) -> None:
        self.config, self.policy, self.predictions, self.tuner = config, policy, predictions, tuner
        self.prompts, self.limits = prompts, limits
        self.decisions: dict[BenchStrategy, Decision] = {}
        self.kv_decisions: dict[BenchStrategy, KVDecision] = {}
        """The tuned continuous rows' decisions (cb-tuned, vllm-tuned)."""

    @property
    def tunes(self) -> bool:
        """True when the fcr-oracle row is tuned (--tune.data or --tune.lengths with a tuner)."""
        return self.tuner is not None and bool(self.config.tune.held_out)

    def decision(self, strategy: BenchStrategy, predicted: Sequence[int] | None = None) -> Decision | None:
        """The fcr or fcr-oracle row's decision (None unless --tune.data or --tune.lengths asks for tuning; for
        fcr, also None without held-out errors)."""
        if strategy in self.decisions:
            return self.decisions[strategy]
        exact = strategy is BenchStrategy.FCR_ORACLE
        if not self.tunes or (not exact and self.tuner.errors is None):  # type: ignore[union-attr]
            return None
        assert self.tuner is not None
        if predicted is None:
            if self.predictions is None:
                raise ValueError(f"{strategy.value}: no predictions to tune on")
            predicted, _, _ = self.predictions.get(strategy.source, share_prefill=False)
        assert predicted is not None
        by_quantile = self.predictions.quantile_lengths if self.predictions is not None else {}
        if not exact and self.tuner.errors_by_quantile and by_quantile:
            _, decision = self.tuner.decide_quantiles(
                by_quantile, self.prompts, self.limits, self.policy, self.config.vanilla_batch_size
            )
        else:
            decision = self.tuner.decide(
                predicted, self.prompts, self.limits, self.policy, self.config.vanilla_batch_size, exact=exact
            )
        print(f"{strategy.value}: {decision.describe()}", flush=True)
        self.decisions[strategy] = decision
        return decision

    def kv_decision(
        self,
        strategy: BenchStrategy,
        engine: Engine,
        predicted: Sequence[int],
        cost: CostModel,
    ) -> KVDecision:
        """A tuned continuous row's admission rule and order (serving.policy.kv_tuning) for this engine and its step
        cost, on the served prompts' predictions with true lengths drawn from the held-out errors (the tuner's draws,
        seed, objective and min_gain); greedy FCFS when nothing is predicted to beat it. The predictions are made
        before deciding, so their time is spent either way and no candidate is charged it."""
        if strategy in self.kv_decisions:
            return self.kv_decisions[strategy]
        model = continuous_model(engine)
        if self.tuner is None or self.tuner.errors is None or model is None:
            raise SeqschedError(
                f"{strategy.value} chooses its policy from the predictor's held-out errors on a continuous engine: "
                "give --tune.data (or --tune.lengths) and a --predictor"
            )
        errors = self.tuner.errors
        if self.predictions is not None and self.predictions.quantile_lengths:
            errors = self.tuner.errors_by_quantile.get(self.predictions.quantiles[0], errors)
        settings = KVTuneConfig.from_tune(self.tuner.tune, takes_reservations(engine))
        base = strategy_config(strategy, self.policy, self.config.vanilla_batch_size)
        decision = decide_kv(predicted, self.prompts, self.limits, errors, model, cost, base, settings)
        print(f"{strategy.value}: {decision.describe()}", flush=True)
        self.kv_decisions[strategy] = decision
        return decision

    def for_row(self, row: BenchRow, predicted: Sequence[int] | None) -> tuple[ScheduleConfig, Decision | None]:
        """The row's config and the decision it follows."""
        strategy = row.strategy
        if row.paper:
            return strategy_config(strategy, self.policy, self.config.vanilla_batch_size), None
        if strategy in (BenchStrategy.FCR, BenchStrategy.FCR_ORACLE):
            decision = self.decision(strategy, predicted)
            if decision is not None:
                return decision.config, decision
        elif strategy is not BenchStrategy.VANILLA and (decision := self.decision(BenchStrategy.FCR)) is not None:
            return strategy_config(strategy, decision.scheduled, self.config.vanilla_batch_size), None
        return strategy_config(strategy, self.policy, self.config.vanilla_batch_size), None


def continuous_pool(
    engine: Engine, requests: Sequence[Request], config: BenchConfig, cost: CostModel | None
) -> tuple[Engine, dict[str, Any]]:
    """The engine of the cb-* rows: the loaded HF model as a pool of --engine.slots rows, or of as many as the
    measured step cost suggests (serving.measure.slots); a vLLM engine serves them itself."""
    from serving.measure.slots import slots_for

    static = with_batching(engine, Batching.STATIC)
    if static.batching is Batching.CONTINUOUS:
        return static, {"slots": None, "rule": "the engine's own scheduler (vLLM max_num_seqs)"}
    if config.engine.slots is not None:
        slots, info = config.engine.slots, {"slots": config.engine.slots, "rule": "--engine.slots"}
    else:
        slots, info = slots_for(static, requests, config.limit, cost)
    return with_batching(
        static, Batching.CONTINUOUS, slots, config.engine.admit_min, config.engine.kv_budget_tokens
    ), info


def bench_tuner(config: BenchConfig, engine: Engine, predictions: Predictions) -> Tuner | None:
    """The step cost (for tuning, the simulated times and budget sizing), the KV budget and the predictor's
    held-out errors; None on a continuous engine (no static batches to tune or simulate)."""
    if engine.batching is not Batching.STATIC:
        print("continuous-batching engine: no tuning or simulated times (the engine schedules its own batches)")
        return None
    if not (config.simulate or config.tune.held_out or config.budget_s is not None):
        return budget_only(config)  # the budget alone: no decision without held-out errors
    needs_predictor = config.tune.held_out and any(s.source is Source.PREDICTOR for s in config.strategies)
    predictor = predictions.predictor() if needs_predictor else None
    return tuner_for(config, engine, prompt_lengths(engine, predictions.requests), predictor)


@dataclass(frozen=True)
class RowPlan:
    """One table row as the sizing simulates it: its schedule and whether it plans with the true lengths."""

    name: str
    config: ScheduleConfig
    oracle: bool = False


@dataclass
class SizingInputs:
    """What sizing simulates with, for every offered request: its true (replayed) length, its prediction (None
    without a predictor row), its prompt tokens and its own limit."""

    true: list[int]
    predicted: list[int] | None
    prompts: list[int]
    limits: list[int]


def simulated_seconds(
    rows: Sequence[RowPlan], inputs: SizingInputs, cost: CostModel, count: int, evict_finished: bool = False
) -> dict[str, float]:
    """Each row's simulated time on the first `count` requests (replayed lengths: exact but for the cost model)."""
    seconds = {}
    limits = inputs.limits[:count]
    truth = [min(value, limit) for value, limit in zip(inputs.true[:count], limits, strict=True)]
    for row in rows:
        guess = truth if row.oracle or inputs.predicted is None else list(inputs.predicted[:count])
        result = simulate(
            guess,
            truth,
            row.config,
            cost,
            limits=limits,
            prompt_tokens=inputs.prompts[:count],
            evict_finished=evict_finished,
        )
        seconds[row.name] = result.total.time_s
    return seconds


def candidate_counts(total: int) -> list[int]:
    """Prompt counts the sizing tries, largest first: all, then every 25 below, then 16, 8, 4, 2, 1."""
    counts = [total, *range(total - total % 25, 0, -25)]
    counts += [value for value in (16, 8, 4, 2, 1) if value < min(counts)]
    return list(dict.fromkeys(value for value in counts if 0 < value <= total))


def fit_count(
    rows: Sequence[RowPlan],
    inputs: SizingInputs,
    cost: CostModel,
    seconds_left: float,
    repeats: int = 1,
    evict_finished: bool = False,
) -> tuple[int, dict[str, Any]]:
    """The most prompts (a prefix) whose rows, `repeats` rounds each, are simulated to fit SIZING_SAFETY of the
    seconds left; at least one (a one-prompt table beats none)."""
    allowed = seconds_left * SIZING_SAFETY
    tried = []
    chosen, chosen_rows = 0, {}
    for count in candidate_counts(len(inputs.true)):
        chosen, chosen_rows = count, simulated_seconds(rows, inputs, cost, count, evict_finished)
        total = repeats * sum(chosen_rows.values())
        tried.append({"count": count, "simulated_s": round(total, 1)})
        if total <= allowed:
            break
    info = {
        "seconds_left": round(seconds_left, 1),
        "safety": SIZING_SAFETY,
        "allowed_s": round(allowed, 1),
        "count": chosen,
        "simulated_row_s": {name: round(value, 1) for name, value in chosen_rows.items()},
        "tried": tried,
    }
    return chosen, info


def tuning_estimate_s(tuner: Tuner, inputs: SizingInputs, policy: ScheduleConfig, count: int, draws: int) -> float:
    """Seconds one tuning decision would take on `count` requests here: one candidate timed, times the candidates."""
    guess = inputs.predicted if inputs.predicted is not None else inputs.true
    workload = draw_workload(
        guess[:count], inputs.prompts[:count], ErrorModel.exact(), policy.limit, limits=inputs.limits[:count]
    )
    started = time.perf_counter()
    workload.time(policy, tuner.cost)
    return (time.perf_counter() - started) * draws * TUNING_CANDIDATES


class Sizer:
    """--budget_s: the most prompts (a prefix of those offered) whose rows fit the time left, as the simulator
    predicts with the measured step cost and the replayed lengths. Sized first with every row under the starting
    policy (tuning is predicted to speed the tuned rows up, so this errs on the safe side, with two tunings' time
    reserved); then the rows' decisions are tuned for that many prompts and the count sized again with them (one
    tuning reserved); a count that changed is tuned once more."""

    def __init__(
        self,
        config: BenchConfig,
        rows: Sequence[BenchRow],
        tuner: Tuner,
        policy: ScheduleConfig,
        inputs: SizingInputs,
        predictions: Predictions | None = None,
    ) -> None:
        self.config, self.rows, self.tuner, self.policy = config, list(rows), tuner, policy
        self.inputs, self.predictions = inputs, predictions

    @classmethod
    def for_engine(
        cls,
        engine: Engine,
        config: BenchConfig,
        rows: Sequence[BenchRow],
        tuner: Tuner,
        predictions: Predictions,
        policy: ScheduleConfig,
    ) -> Sizer:
        """Sizing for a replay engine's requests: their replayed lengths, predictions and prompt tokens."""
        recorded = getattr(engine, "recorded_lengths", None)
        if recorded is None:
            raise SeqschedError(
                "--budget_s sizes a length replay (--engine.replay): other engines' lengths are not known"
            )
        requests = predictions.requests
        predicted = None
        if any(row.strategy.source is Source.PREDICTOR for row in rows):  # perception is not replayed
            predicted = predictions.predictor().predict_requests(requests)
        inputs = SizingInputs(
            recorded(requests), predicted, prompt_lengths(engine, requests), own_limits(requests, policy.limit)
        )
        return cls(config, rows, tuner, policy, inputs, predictions)

    def plans(self, policies: Policies | None) -> list[RowPlan]:
        """The rows' configs: all under the starting policy (None), else as `policies` would serve them."""
        plans = []
        for row in self.rows:
            if policies is None:
                cfg = strategy_config(row.strategy, self.policy, self.config.vanilla_batch_size)
            else:
                cfg, _ = policies.for_row(row, None)
            plans.append(RowPlan(row.name, cfg, oracle=row.strategy.source is not Source.PREDICTOR))
        return plans

    def policies(self, count: int) -> Policies:
        """Policies tuned for the first `count` requests (true lengths capped as vanilla's run would give them)."""
        inputs = self.inputs
        truth = [min(value, limit) for value, limit in zip(inputs.true[:count], inputs.limits[:count], strict=True)]
        predictions = self.predictions.for_requests(self.predictions.requests[:count]) if self.predictions else None
        policies = Policies(
            self.config,
            self.policy,
            predictions,
            self.tuner,
            inputs.prompts[:count],
            inputs.limits[:count],
        )
        if policies.tunes:
            if any(row.strategy.source is Source.PREDICTOR and not row.paper for row in self.rows):
                assert inputs.predicted is not None
                policies.decision(BenchStrategy.FCR, inputs.predicted[:count])
            if any(row.strategy is BenchStrategy.FCR_ORACLE and not row.paper for row in self.rows):
                policies.decision(BenchStrategy.FCR_ORACLE, truth)
        return policies

    def size(self, started: float) -> tuple[int, Policies | None, dict[str, Any]]:
        """The count, the policies tuned for it (None without tuning) and how it was chosen."""
        budget = self.config.budget_s
        assert budget is not None
        cost, repeats = self.tuner.cost, self.config.repeats
        evict = self.tuner.evict_finished
        tunes = bool(self.config.tune.held_out) and any(not row.paper and row.strategy.uses_policy for row in self.rows)
        draws = self.config.tune.draws + 1  # fcr's draws and fcr-oracle's one exact draw, roughly

        def left(reserve: float) -> float:
            return budget - (time.perf_counter() - started) - reserve

        full = len(self.inputs.true)
        once = tuning_estimate_s(self.tuner, self.inputs, self.policy, full, draws) if tunes else 0.0
        count, info = fit_count(self.plans(None), self.inputs, cost, left(2 * once), repeats, evict)
        info["tuning_reserve_s"] = round(2 * once, 1)
        policies = None
        if tunes:
            first = count
            policies = self.policies(first)
            count, info = fit_count(self.plans(policies), self.inputs, cost, left(once), repeats, evict)
            info.update(first_count=first, tuning_reserve_s=round(once, 1))
            if count != first:
                policies = self.policies(count)
        info.update(offered=full, cost_model=type(cost).__name__)
        return count, policies, info


__all__ = [
    "SIZING_SAFETY",
    "Policies",
    "Predictions",
    "RowPlan",
    "Sizer",
    "SizingInputs",
    "bench_tuner",
    "candidate_counts",
    "continuous_pool",
    "fit_count",
    "simulated_seconds",
]
