"""`seqsched bench`: the paper's table, rerun here. Several strategies serve the same prompts in one process, one
model, repeated and interleaved so machine noise hits them alike; greedy decoding, so the oracle's lengths are
exactly the lengths vanilla produced and every strategy's outputs can be checked against vanilla's.

The static rows (vanilla, seqsch, vbs, fcr, ...) run the paper's batches; the cb-* rows run the same loaded model as
a continuous-batching pool (seqsched.engines.hf_continuous) with an admission policy (serving.admission): FCFS,
SJF by the predictor, SJF by the oracle, SJF with FCR caps. Every request is submitted at t=0, as in an offline
batch job, so latencies are completion times from the start of the run.

Writes <out>.json (every run, per-request lengths and predictions, the tuned policy), <out>.md (the table and
where the time goes) and <out>.png (bar charts).
"""

from __future__ import annotations

import enum
import logging
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from seqsched.config import to_dict
from seqsched.engines.api import Batching, Engine
from seqsched.engines.config import EngineConfig
from seqsched.engines.selection import build_engine, set_torch_threads, with_batching
from seqsched.errors import SeqschedError, require_at_least
from seqsched.files import atomic_path, check_writable, write_json, write_text
from seqsched.model_specs import ModelConfig
from seqsched.requests import InputFormat, Request, read_requests
from seqsched.tables import table
from serving.autotune import Tuner, own_limits, prepare_tuner, prompt_lengths
from serving.costmodel import CostConfig, machine_name
from serving.memory import MemoryConfig, kv_budget
from serving.predictors import PredictorSource, RequestPredictor, parse_predictor, resolve_predictor
from serving.runner import RunOptions, RunResult, run
from serving.scheduler import Admission, ScheduleConfig, Strategy
from serving.stepcost import CostModel, StepCost
from serving.workload import Decision, TuneConfig

log = logging.getLogger(__name__)


class Source(enum.Enum):
    """Where a strategy's predicted lengths come from."""

    NONE = "none"
    PREDICTOR = "predictor"
    PERCEPTION = "perception"
    ORACLE = "oracle"


class BenchStrategy(enum.Enum):
    """The table's rows: the paper's ablation plus perception-only and oracle predictions (static batches), and
    continuous batching with each admission policy (cb-*)."""

    VANILLA = "vanilla"
    SEQSCH = "seqsch"
    VBS = "vbs"
    FCR = "fcr"
    FCR_PERCEPTION = "fcr-perception"
    FCR_ORACLE = "fcr-oracle"
    CB_FCFS = "cb-fcfs"
    CB_SJF = "cb-sjf"
    CB_SJF_ORACLE = "cb-sjf-oracle"
    CB_SJF_FCR = "cb-sjf-fcr"

    @property
    def continuous(self) -> bool:
        """True for the rows served by the continuous-batching pool."""
        return self.value.startswith("cb-")

    @property
    def admission(self) -> Admission:
        """The admission policy of a cb-* row (auto for the static rows)."""
        if not self.continuous:
            return Admission.AUTO
        if self is BenchStrategy.CB_FCFS:
            return Admission.FCFS
        return Admission.SJF_FCR if self is BenchStrategy.CB_SJF_FCR else Admission.SJF

    @property
    def strategy(self) -> Strategy:
        """The scheduler strategy this row runs (a cb-* row: its policy's static counterpart)."""
        if self.continuous:
            return {Admission.FCFS: Strategy.VANILLA, Admission.SJF: Strategy.SEQSCH}.get(self.admission, Strategy.FCR)
        return Strategy(self.value.split("-")[0])

    @property
    def source(self) -> Source:
        """Where its predictions come from."""
        if self in (BenchStrategy.VANILLA, BenchStrategy.CB_FCFS):
            return Source.NONE
        if self is BenchStrategy.FCR_PERCEPTION:
            return Source.PERCEPTION
        if self in (BenchStrategy.FCR_ORACLE, BenchStrategy.CB_SJF_ORACLE):
            return Source.ORACLE
        return Source.PREDICTOR


ALL_STRATEGIES = tuple(BenchStrategy)

TABLE_COLUMNS = (
    "strategy",
    "samples_per_s",
    "tokens_per_s",
    "effective_token_ratio",
    "failure_ratio",
    "latency_mean_s",
    "latency_p50_s",
    "latency_p99_s",
    "time_to_half_s",
    "predictor_share",
    "speedup",
    "of_oracle",
    "same_as_vanilla",
)
VS_CB_FCFS_COLUMNS = ("speed_vs_cb_fcfs", "latency_vs_cb_fcfs")
"""Columns added to the table when cb-fcfs ran: samples/s and mean latency as ratios to cb-fcfs's."""
CONTINUOUS_COLUMNS = (
    "strategy",
    "slots",
    "samples_per_s",
    "latency_mean_s",
    "time_to_half_s",
    "decode_steps",
    "mean_rows",
    "ms_per_step",
    "padding_share",
    "prefills",
    "prefill_s",
)
TIME_COLUMNS = (
    "strategy",
    "total_s",
    "predictor_s",
    "prefill_s",
    "decode_s",
    "other_s",
    "row_steps",
    "generated_tokens",
    "wasted_share",
    "recompute_share",
    "batches",
)


@dataclass(frozen=True)
class BenchConfig(ScheduleConfig):
    """Strategies side by side on the same prompts: the scheduling fields are the policy of the scheduled rows
    (seqsch, vbs, fcr); vanilla runs in input order with vanilla_batch_size."""

    input: str = ""
    """Prompts: ShareGPT/Alpaca JSON(L), plain JSONL {id, prompt}, OpenAI Batch JSONL or a dataset folder."""
    input_format: InputFormat = InputFormat.AUTO
    offset: int = 0
    """Skip this many prompts of the file first."""
    count: int | None = None
    """Serve this many prompts (default: all)."""
    predictor: str = "none"
    """The predictor of seqsch, vbs and fcr: models:/NAME/VERSION, models:/NAME@ALIAS, runs:/..., oracle:FILE."""
    tracking_uri: str | None = None
    strategies: tuple[BenchStrategy, ...] = ALL_STRATEGIES
    """Rows to run: vanilla, seqsch, vbs, fcr, fcr-perception, fcr-oracle (static batches; vanilla always runs: it
    is the base), cb-fcfs, cb-sjf, cb-sjf-oracle, cb-sjf-fcr (continuous batching with `--engine.slots` rows, or as
    many as the measured step cost suggests: see serving.slots)."""
    repeats: int = 1
    """Rounds over all strategies; each round rotates their order. The table shows each strategy's median round."""
    vanilla_batch_size: int = 16
    """The paper's vanilla batch size (seqsch uses it too, so that row shows what sorting alone does)."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """With `--tune.data HELD_OUT_LENGTHS`: the fcr row's margin, bins and VBS are tuned by simulation on the
    served prompts' predicted and prompt lengths with the predictor's held-out errors (seqsch, vbs and
    fcr-perception use that policy too); fcr-oracle is tuned on the true lengths. An fcr row whose schedule is
    not predicted to beat vanilla by --tune.min_gain serves vanilla batches (its row says so)."""
    cost: CostConfig = field(default_factory=CostConfig)
    """The step cost the simulator uses: measured once per machine and model over batch sizes x contexts, cached."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    """The KV-cache budget of a batch: rows x (prompt + cap) stays within it."""
    simulate: bool = True
    """Show each row's simulated time (the same cost model) beside its measured time."""
    select_lengths: str | None = None
    """A length file in the paper's format ({"id", "L_t0.0", ...}): keep only prompts whose paper label (the max
    over temperatures, rounded up to 50) is at least select_min_label (after --offset, before --count)."""
    select_min_label: int = 0
    """The label threshold of --select_lengths (250 with the paper's labels: answers that mostly reach the limit)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The engine; static rows run static batches on it and cb-* rows a continuous pool of `--engine.slots` rows
    over the same loaded model (whatever `--engine.batching` says; vLLM serves every row itself)."""
    torch_threads: int | None = None
    """CPU threads for torch (default: torch's choice)."""
    out: str = "outputs/bench/bench"
    """Writes OUT.json, OUT.md and OUT.png."""
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 0, "offset")
        require_at_least(self, 1, "count", "repeats", "vanilla_batch_size", "torch_threads")


@dataclass
class StrategyRun:
    """One strategy's run in one round."""

    strategy: BenchStrategy
    round: int
    result: RunResult
    predicted: list[int] | None
    same_as_vanilla: int
    decision: Decision | None = None
    """The tuning decision this row served (None: the configured policy)."""
    simulated: dict[str, float] | None = None
    """What the cost model predicts this run cost (the same plan on the true lengths)."""


@dataclass
class BenchResult:
    """Every run, the summary rows and what was tuned."""

    runs: list[StrategyRun]
    rows: list[dict[str, Any]]
    time_rows: list[dict[str, Any]]
    policy: ScheduleConfig
    tuning: dict[str, Any] = field(default_factory=dict)
    continuous_rows: list[dict[str, Any]] = field(default_factory=list)
    """The cb-* rows' engine counters (pool size, steps, rows per step, alignment padding, prefills)."""
    slots: dict[str, Any] = field(default_factory=dict)
    """The continuous pool's size and how it was chosen."""
    sim_rows: list[dict[str, Any]] = field(default_factory=list)
    """Simulated vs measured time per strategy (the median round)."""

    def row(self, strategy: BenchStrategy) -> dict[str, Any]:
        """The summary row of a strategy."""
        return next(row for row in self.rows if row["strategy"] == strategy.value)


def round_order(strategies: Sequence[BenchStrategy], index: int) -> list[BenchStrategy]:
    """The order of round `index`: vanilla first in round 0 (the oracle needs its lengths), then everything
    rotated by one per round so no strategy always runs first or last."""
    others = [item for item in strategies if item is not BenchStrategy.VANILLA]
    ordered = [BenchStrategy.VANILLA, *others]
    if index == 0:
        return ordered
    shift = index % len(ordered)
    return ordered[shift:] + ordered[:shift]


def strategy_config(strategy: BenchStrategy, policy: ScheduleConfig, vanilla_batch_size: int) -> ScheduleConfig:
    """The schedule one row runs (a cb-* row: its admission policy with the tuned margin and bins)."""
    if strategy.continuous:
        return replace(policy, strategy=strategy.strategy, policy=strategy.admission)
    if strategy.strategy in (Strategy.VANILLA, Strategy.SEQSCH):
        return replace(policy, strategy=strategy.strategy, batch_size=vanilla_batch_size, policy=Admission.AUTO)
    return replace(policy, strategy=strategy.strategy, policy=Admission.AUTO)


def _same(result: RunResult, vanilla: RunResult) -> int:
    return sum(a.token_ids == b.token_ids for a, b in zip(result.records, vanilla.records, strict=True))


def median_runs(
    runs: Sequence[StrategyRun], strategies: Sequence[BenchStrategy]
) -> tuple[dict[BenchStrategy, StrategyRun], dict[BenchStrategy, list[float]]]:
    """Each strategy's median round by samples/s, and its samples/s over all rounds."""
    chosen: dict[BenchStrategy, StrategyRun] = {}
    spread: dict[BenchStrategy, list[float]] = {}
    for strategy in strategies:
        mine = sorted(
            (item for item in runs if item.strategy is strategy), key=lambda r: r.result.metrics.samples_per_s
        )
        if mine:
            chosen[strategy] = mine[(len(mine) - 1) // 2]
            spread[strategy] = [item.result.metrics.samples_per_s for item in mine]
    return chosen, spread


def summarize(runs: Sequence[StrategyRun], strategies: Sequence[BenchStrategy]) -> tuple[list[dict], list[dict]]:
    """One row per strategy (its median round by samples/s) with speedup vs vanilla and share of the oracle, and
    samples/s and mean latency as ratios to cb-fcfs when it ran."""
    chosen, spread = median_runs(runs, strategies)
    base = chosen[BenchStrategy.VANILLA].result.metrics.samples_per_s
    oracle = chosen.get(BenchStrategy.FCR_ORACLE)
    oracle_sps = oracle.result.metrics.samples_per_s if oracle else None
    cb_fcfs = chosen.get(BenchStrategy.CB_FCFS)
    rows, time_rows = [], []
    for strategy, item in chosen.items():
        metrics = item.result.metrics
        values = spread[strategy]
        versus = {}
        if cb_fcfs is not None:
            reference = cb_fcfs.result.metrics
            versus = {
                "speed_vs_cb_fcfs": metrics.samples_per_s / reference.samples_per_s,
                "latency_vs_cb_fcfs": metrics.latency_mean_s / reference.latency_mean_s,
            }
        schedule = ""
        if item.decision is not None:
            schedule = "vanilla (fallback)" if item.decision.fallback else "tuned"
        rows.append(
            {
                **metrics.row(),
                **versus,
                "strategy": strategy.value,
                "schedule": schedule,
                "speedup": metrics.samples_per_s / base if base else float("nan"),
                "of_oracle": metrics.samples_per_s / oracle_sps if oracle_sps else float("nan"),
                "same_as_vanilla": f"{item.same_as_vanilla}/{metrics.requests}",
                "rounds": len(values),
                "samples_per_s_min": min(values),
                "samples_per_s_max": max(values),
                "samples_per_s_stdev": statistics.pstdev(values) if len(values) > 1 else 0.0,
            }
        )
        # A batch that reused a probe's prefill computed none (padded_prompt_tokens 0): no padding either.
        prompt_pad = sum(max(0, b.padded_prompt_tokens - b.prompt_tokens) for b in item.result.batches)
        time_rows.append(
            {
                "strategy": strategy.value,
                "total_s": metrics.total_s,
                "predictor_s": metrics.predictor_s,
                "tuning_s": metrics.tuning_s,
                "prefill_s": metrics.prefill_s,
                "decode_s": metrics.decode_s,
                "other_s": max(0.0, metrics.generation_s - metrics.prefill_s - metrics.decode_s),
                "row_steps": metrics.row_steps,
                "generated_tokens": metrics.generated_tokens,
                "wasted_share": 1.0 - metrics.effective_token_ratio if metrics.row_steps else 0.0,
                "recompute_share": metrics.recompute_share,
                "batches": metrics.batches,
                "prompt_padding_tokens": prompt_pad,
            }
        )
    return rows, time_rows


def continuous_rows(
    runs: Sequence[StrategyRun], strategies: Sequence[BenchStrategy], slots: int | None
) -> list[dict[str, Any]]:
    """The cb-* rows' engine counters (of the round the table shows): decode steps, mean rows per step, ms per
    step, the share of attended context that was alignment padding, prefills."""
    out = []
    for strategy, item in median_runs(runs, strategies)[0].items():
        if not strategy.continuous:
            continue
        metrics = item.result.metrics
        submissions = item.result.extra.get("submissions", [])
        assert isinstance(submissions, list)
        steps = sum(sub["steps"] for sub in submissions)
        decode_s = sum(sub["decode_s"] for sub in submissions)
        context = sum(sub["context_tokens"] for sub in submissions)
        padded = sum(sub["padded_context_tokens"] for sub in submissions)
        out.append(
            {
                "strategy": strategy.value,
                "slots": slots,
                "samples_per_s": metrics.samples_per_s,
                "latency_mean_s": metrics.latency_mean_s,
                "time_to_half_s": metrics.time_to_half_s,
                "decode_steps": steps,
                "mean_rows": sum(sub["row_steps"] for sub in submissions) / steps if steps else 0.0,
                "ms_per_step": 1000 * decode_s / steps if steps else 0.0,
                "padding_share": 1 - context / padded if padded else 0.0,
                "prefills": sum(sub["prefills"] for sub in submissions),
                "prefill_s": sum(sub["prefill_s"] for sub in submissions),
            }
        )
    return out


def simulation_rows(runs: Sequence[StrategyRun], strategies: Sequence[BenchStrategy]) -> list[dict[str, Any]]:
    """Per strategy (its median round, as in the table): the simulated prefill, decode and generation time next to
    the measured ones, and the relative error of the total (the cost model's check: within 10%)."""
    out = []
    for strategy, item in median_runs(runs, strategies)[0].items():
        if item.simulated is None:
            continue
        metrics, simulated = item.result.metrics, item.simulated
        measured = metrics.prefill_s + metrics.decode_s
        out.append(
            {
                "strategy": strategy.value,
                "measured_s": measured,
                "simulated_s": simulated["time_s"],
                "error": simulated["time_s"] / measured - 1 if measured else float("nan"),
                "measured_prefill_s": metrics.prefill_s,
                "simulated_prefill_s": simulated["prefill_s"],
                "measured_decode_s": metrics.decode_s,
                "simulated_decode_s": simulated["decode_s"],
                "measured_row_steps": metrics.row_steps,
                "simulated_row_steps": int(simulated["row_steps"]),
            }
        )
    return out


class _Predictions:
    """Predicted lengths per source, each prediction timed (it counts in the run's total time)."""

    def __init__(self, engine: Engine, config: BenchConfig, requests: Sequence[Request]) -> None:
        self.engine, self.config, self.requests = engine, config, requests
        self.oracle: list[int] | None = None
        self._predictor: RequestPredictor | None = None
        self._perception: RequestPredictor | None = None
        self.last: RequestPredictor | None = None

    def predictor(self) -> RequestPredictor:
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

    def get(self, source: Source, share_prefill: bool = True) -> tuple[list[int] | None, float, float]:
        """Predicted lengths, seconds the prediction took, and the part of them that prefilled prompts for the
        run (a probe sharing the serving prefill; release() frees those prefills after the run)."""
        self.last = None
        if source is Source.NONE:
            return None, 0.0, 0.0
        if source is Source.ORACLE:
            if self.oracle is None:
                raise RuntimeError("the oracle's lengths come from vanilla's run, which has not run yet")
            return list(self.oracle), 0.0, 0.0
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
        values = predictor.predict_requests(self.requests)
        self.last = predictor
        return values, time.perf_counter() - started, float(getattr(predictor, "prefill_s", 0.0))

    def release(self) -> None:
        """Free what the last prediction kept for its run (prefilled prompts)."""
        release = getattr(self.last, "release", None)
        if release is not None:
            release()


class _Policies:
    """The config each row serves: the fcr row's decision (tuned on the served predictions, vanilla when it does
    not win) shared by seqsch, vbs and fcr-perception; fcr-oracle's own (tuned on the true lengths). Decisions are
    made once and reused by later rounds (same inputs, same answer)."""

    def __init__(
        self,
        config: BenchConfig,
        policy: ScheduleConfig,
        predictions: _Predictions,
        tuner: Tuner | None,
        prompts: list[int],
        limits: list[int],
    ) -> None:
        self.config, self.policy, self.predictions, self.tuner = config, policy, predictions, tuner
        self.prompts, self.limits = prompts, limits
        self.decisions: dict[BenchStrategy, Decision] = {}

    def decision(self, strategy: BenchStrategy, predicted: Sequence[int] | None = None) -> Decision | None:
        """The fcr or fcr-oracle row's decision (None unless --tune.data asks for tuning; for fcr, also None
        without held-out errors)."""
        if strategy in self.decisions:
            return self.decisions[strategy]
        exact = strategy is BenchStrategy.FCR_ORACLE
        if self.tuner is None or not self.config.tune.data or (not exact and self.tuner.errors is None):
            return None
        if predicted is None:
            predicted, _, _ = self.predictions.get(strategy.source, share_prefill=False)
        assert predicted is not None
        decision = self.tuner.decide(
            predicted, self.prompts, self.limits, self.policy, self.config.vanilla_batch_size, exact=exact
        )
        print(f"{strategy.value}: {decision.describe()}", flush=True)
        self.decisions[strategy] = decision
        return decision

    def for_row(
        self, strategy: BenchStrategy, predicted: Sequence[int] | None
    ) -> tuple[ScheduleConfig, Decision | None]:
        """The row's config and the decision it follows."""
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
    measured step cost suggests (serving.slots); a vLLM engine serves them itself."""
    from serving.slots import slots_for

    static = with_batching(engine, Batching.STATIC)
    if static.batching is Batching.CONTINUOUS:
        return static, {"slots": None, "rule": "the engine's own scheduler (vLLM max_num_seqs)"}
    if config.engine.slots is not None:
        slots, info = config.engine.slots, {"slots": config.engine.slots, "rule": "--engine.slots"}
    else:
        slots, info = slots_for(static, requests, config.limit, cost)
    return with_batching(static, Batching.CONTINUOUS, slots, config.engine.admit_min), info


def run_bench(
    engine: Engine,
    requests: Sequence[Request],
    config: BenchConfig,
    tuner: Tuner | None = None,
    predictions: _Predictions | None = None,
) -> BenchResult:
    """Run every strategy `repeats` times, interleaved, and summarize. tuner: the step cost (for the simulated
    times), KV budget and held-out errors (for tuning on these requests); None runs the configured policy.
    predictions: the predictor sources, when already loaded (bench_tuner loads the predictor first)."""
    if not requests:
        raise SeqschedError("no prompts to benchmark")
    if config.repeats < 1:
        raise SeqschedError(f"--repeats must be >= 1, got {config.repeats}")
    if config.policy is not Admission.AUTO:
        raise SeqschedError("bench: each cb-* row sets its own admission policy (cb-fcfs, cb-sjf, ...); drop --policy")
    strategies = [BenchStrategy.VANILLA, *(s for s in config.strategies if s is not BenchStrategy.VANILLA)]
    static = with_batching(engine, Batching.STATIC)
    continuous = any(strategy.continuous for strategy in strategies)
    predictions = predictions or _Predictions(static, config, requests)
    policy = replace(config.schedule(), strategy=Strategy.FCR, policy=Admission.AUTO)
    if tuner is not None:
        policy = tuner.apply_budget(policy)
    pool, slots = (static, {})
    if continuous:
        pool, slots = continuous_pool(engine, requests, config, tuner.cost if tuner is not None else None)
    if continuous:
        print(f"continuous rows: {slots['slots']} slots ({slots['rule']})", flush=True)
    prompts = prompt_lengths(engine, requests)
    limits = own_limits(requests, policy.limit)
    policies = _Policies(config, policy, predictions, tuner, prompts, limits)
    options = RunOptions(progress=config.progress)
    runs: list[StrategyRun] = []
    vanilla: RunResult | None = None
    for index in range(config.repeats):
        for strategy in round_order(strategies, index):
            predicted, predictor_s, shared_prefill_s = predictions.get(
                strategy.source, share_prefill=not strategy.continuous
            )
            cfg, decision = policies.for_row(strategy, predicted)
            tuning_s = decision.tuning_s if decision is not None else 0.0
            serving = pool if strategy.continuous else static
            result = run(
                serving,
                requests,
                predicted,
                cfg,
                options,
                predictor_s=predictor_s,
                shared_prefill_s=shared_prefill_s,
                tuning_s=tuning_s,
            )
            predictions.release()
            if vanilla is None:
                vanilla = result
                predictions.oracle = [record.num_tokens for record in result.records]
            same = _same(result, vanilla)
            runs.append(StrategyRun(strategy, index, result, predicted, same, decision))
            metrics = result.metrics
            print(
                f"round {index + 1}/{config.repeats} {strategy.value}: {metrics.samples_per_s:.3f} samples/s, "
                f"mean latency {metrics.latency_mean_s:.1f} s, {metrics.total_s:.1f} s, outputs equal to "
                f"vanilla's {same}/{metrics.requests}",
                flush=True,
            )
    assert vanilla is not None
    true = [record.num_tokens for record in vanilla.records]
    if tuner is not None and config.simulate:
        for item in runs:
            if item.strategy.continuous:
                continue  # the simulator models static batches (a pool: serving.simulate_continuous)
            simulated = tuner.simulate_run(item.predicted, true, prompts, limits, item.result.config)
            item.simulated = {key: float(value) for key, value in simulated.summary().items() if key != "strategy"}
    rows, time_rows = summarize(runs, strategies)
    tuning: dict[str, Any] = dict(tuner.info) if tuner is not None else {}
    tuning["decisions"] = {strategy.value: decision.as_dict() for strategy, decision in policies.decisions.items()}
    pool_rows = continuous_rows(runs, strategies, slots.get("slots")) if continuous else []
    return BenchResult(runs, rows, time_rows, policy, tuning, pool_rows, slots, simulation_rows(runs, strategies))


def report_dict(result: BenchResult, config: BenchConfig, requests: Sequence[Request], extra: dict) -> dict:
    """Everything the bench measured, as JSON."""
    vanilla = next(item for item in result.runs if item.strategy is BenchStrategy.VANILLA)
    return {
        **extra,
        "config": to_dict(config),
        "policy": to_dict(result.policy),
        "tuning": result.tuning,
        "table": result.rows,
        "time": result.time_rows,
        "simulated": result.sim_rows,
        "ids": [request.id for request in requests],
        "vanilla_lengths": [record.num_tokens for record in vanilla.result.records],
        "predicted": {
            item.strategy.value: item.predicted
            for item in result.runs
            if item.round == 0 and item.predicted is not None and item.strategy.source is not Source.ORACLE
        },
        "runs": [
            {
                "strategy": item.strategy.value,
                "round": item.round,
                **item.result.metrics.row(),
                "config": to_dict(item.result.config),
                "simulated": item.simulated,
            }
            for item in result.runs
        ],
        "slots": result.slots,
        "continuous": result.continuous_rows,
        "completion_s": {
            strategy.value: [record.completion_s for record in item.result.records]
            for strategy, item in median_runs(result.runs, [row.strategy for row in result.runs])[0].items()
        },
    }


def markdown(result: BenchResult, header: str) -> str:
    """The table, the time breakdown, the continuous pool's counters, the tuning decisions and simulated vs
    measured time as markdown."""
    columns = TABLE_COLUMNS
    if any("speed_vs_cb_fcfs" in row for row in result.rows):
        columns = (*TABLE_COLUMNS, *VS_CB_FCFS_COLUMNS)
    text = (
        f"{header}\n\n{table(result.rows, columns)}\n\nWhere the time goes (seconds of the median round; "
        "wasted_share = 1 - effective token ratio: padding, finished rows and recomputed attempts):\n\n"
        f"{table(result.time_rows, TIME_COLUMNS)}\n"
    )
    if result.continuous_rows:
        text += (
            f"\nContinuous batching ({result.slots.get('slots')} slots: {result.slots.get('rule')}; every request "
            "submitted at t=0; padding_share = the share of attended context that was left-padding alignment):\n\n"
            f"{table(result.continuous_rows, CONTINUOUS_COLUMNS)}\n"
        )
    decisions = result.tuning.get("decisions") or {}
    if decisions:
        lines = []
        for name, values in decisions.items():
            verdict = "vanilla batches (fallback)" if values["fallback_to_vanilla"] else "the tuned schedule"
            lines.append(
                f"- {name}: {verdict}; margin +{values['margin_tokens']} x{1 + values['margin_ratio']:.2f}, bins of "
                f"{values['bin_width']}, vbs {values['vbs']}, recompute batch {values['batch_size']}, token budget "
                f"{values['token_budget']}; simulated {values['simulated_s']:.0f} s vs vanilla "
                f"{values['simulated_vanilla_s']:.0f} s ({values['predicted_gain']:.2f}x, min gain "
                f"{values['min_gain']:.0%}), tuned in {values['tuning_s']:.1f} s"
            )
        text += (
            "\nTuned on the served prompts (fcr: mean over draws of true lengths from the predictor's held-out "
            "errors; fcr-oracle: the true lengths):\n\n"
        )
        text += "\n".join(lines) + "\n"
    if result.sim_rows:
        step_cost = result.tuning.get("step_cost") or {}
        text += (
            f"\nSimulated vs measured (prefill + decode seconds of the median round; cost model: "
            f"{step_cost.get('model', '?')} from {step_cost.get('source', '?')}):\n\n{table(result.sim_rows)}\n"
        )
    return text


def plot(result: BenchResult, path: Path, title: str) -> Path:
    """Charts: samples/s (with speedup) and effective token ratio per strategy (static rows blue, continuous
    orange), mean latency and time to half, and the share of requests complete over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["strategy"] for row in result.rows]
    colors = ["#ee7733" if BenchStrategy(name).continuous else "#4477aa" for name in names]
    figure, ((left, right), (latency, done)) = plt.subplots(2, 2, figsize=(12, 8))
    bars = left.bar(names, [row["samples_per_s"] for row in result.rows], color=colors)
    for bar, row in zip(bars, result.rows, strict=True):
        left.annotate(
            f"{row['speedup']:.2f}x",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    left.set_ylabel("samples/s")
    left.set_title("throughput (speedup vs vanilla)")
    right.bar(names, [row["effective_token_ratio"] for row in result.rows], color="#66aa55")
    right.set_ylim(0, 1)
    right.set_title("effective token ratio")
    positions = range(len(names))
    latency.bar([x - 0.2 for x in positions], [row["latency_mean_s"] for row in result.rows], 0.4, label="mean")
    latency.bar([x + 0.2 for x in positions], [row["time_to_half_s"] for row in result.rows], 0.4, label="half done")
    latency.set_xticks(list(positions), names)
    latency.set_ylabel("seconds from submission (all at t=0)")
    latency.set_title("completion latency: mean, and time until half are done")
    latency.legend(fontsize=8)
    shown, _ = median_runs(result.runs, [BenchStrategy(name) for name in names])
    for strategy, item in shown.items():
        times = sorted(record.completion_s for record in item.result.records)
        share = [(position + 1) / len(times) for position in range(len(times))]
        style = "-" if strategy.continuous else "--"
        done.step(times, share, where="post", linestyle=style, label=strategy.value)
    done.set_xlabel("seconds")
    done.set_ylabel("share of requests complete")
    done.set_title("requests complete over time (dashed: static batches)")
    done.legend(fontsize=7)
    for axis in (left, right, latency):
        axis.tick_params(axis="x", rotation=30)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as staging:
        figure.savefig(staging, dpi=110, format="png")
    plt.close(figure)
    return path


def select_by_label(requests: Sequence[Request], lengths_path: str, min_label: int) -> list[Request]:
    """The requests whose paper label (max over the length file's temperatures, rounded up to 50) is at least
    min_label; an error naming the ids the file lacks."""
    from data_tools.labels import label
    from data_tools.paper_labels import read_paper_lengths

    labels = {row.id: label(list(row.lengths.values())) for row in read_paper_lengths(lengths_path)}
    missing = [request.id for request in requests if request.id not in labels]
    if missing:
        raise SeqschedError(
            f"--select_lengths {lengths_path}: no lengths for {len(missing)} prompt ids (e.g. {missing[:3]})"
        )
    return [request for request in requests if labels[request.id] >= min_label]


def bench_requests(config: BenchConfig) -> list[Request]:
    """The prompts: the input after --offset, those over the label threshold when --select_lengths is given,
    then the first --count."""
    requests = read_requests(config.input, config.input_format).requests[config.offset :]
    if config.select_lengths:
        requests = select_by_label(requests, config.select_lengths, config.select_min_label)
        print(f"{len(requests)} prompts with a paper label >= {config.select_min_label} ({config.select_lengths})")
    return requests if config.count is None else requests[: config.count]


def bench_tuner(config: BenchConfig, engine: Engine, predictions: _Predictions) -> Tuner | None:
    """The step cost (for tuning and the simulated times), the KV budget and the predictor's held-out errors;
    None on a continuous engine (no static batches to tune or simulate)."""
    if engine.batching is not Batching.STATIC:
        print("continuous-batching engine: no tuning or simulated times (the engine schedules its own batches)")
        return None
    if not (config.simulate or config.tune.data):
        budget = kv_budget(config.token_budget, config.memory, config.model)
        print(budget.describe())
        return Tuner(StepCost(), budget, config.tune)
    needs_predictor = config.tune.data and any(s.source is Source.PREDICTOR for s in config.strategies)
    predictor = predictions.predictor() if needs_predictor else None
    return prepare_tuner(
        engine,
        config.model,
        config.engine.kind.value,
        config.engine.evict_finished,
        config.cost,
        config.memory,
        config.tune,
        config.token_budget,
        config.limit,
        prompt_lengths(engine, predictions.requests),
        predictor,
        progress=config.progress,
    )


def bench(config: BenchConfig, engine: Engine | None = None) -> BenchResult:
    """`seqsched bench`: every strategy on the same prompts; writes OUT.json, OUT.md and OUT.png."""
    if not config.input:
        raise SeqschedError("--input is required (a prompts file; the recipe names the shared validation set)")
    out = Path(config.out)
    for suffix in (".json", ".md", ".png"):  # before the model loads: hours of measurement must land somewhere
        check_writable(out.with_suffix(suffix), "out")
    set_torch_threads(config.torch_threads)
    requests = bench_requests(config)
    print(f"{len(requests)} prompts from {config.input}; strategies: {', '.join(s.value for s in config.strategies)}")
    started = time.perf_counter()
    # The static rows need static batches; the cb-* rows get a pool over the same model (run_bench).
    engine = engine or build_engine(replace(config.engine, batching=Batching.STATIC), config.model)
    predictions = _Predictions(engine, config, requests)
    tuner = bench_tuner(config, engine, predictions)
    result = run_bench(engine, requests, config, tuner, predictions)
    out = Path(config.out)
    import torch

    device = machine_name()
    extra = {
        "command": shlex.join(["seqsched", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": device,
        "torch_threads": torch.get_num_threads(),
        "model": config.model.spec,
        "engine": config.engine.kind.value,
        "slots": result.slots.get("slots"),
        "prompts": len(requests),
        "wall_s": time.perf_counter() - started,
    }
    write_json(out.with_suffix(".json"), report_dict(result, config, requests, extra))
    header = (
        f"`{extra['command']}`\n\n{extra['date']}, {device}, torch threads {extra['torch_threads']}; model "
        f"{config.model.spec} ({config.engine.kind.value} engine); {len(requests)} prompts, limit {config.limit}, "
        f"greedy; {config.repeats} round(s), median shown"
    )
    text = markdown(result, header)
    write_text(out.with_suffix(".md"), text)
    png = plot(result, out.with_suffix(".png"), f"{config.model.spec}, {len(requests)} prompts, {device}")
    print("\n" + text)
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}, {png}", file=sys.stderr)
    return result
