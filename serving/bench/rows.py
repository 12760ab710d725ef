"""The rows of `seqsched bench` and their summaries (no torch): which strategy a row runs under which policy, one
run's record, and the table built from each row's median round (speed, time breakdown, the continuous pool's
counters, simulated vs measured time)."""

from __future__ import annotations

import enum
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from seqsched.requests import Request
from serving.policy.kv_tuning import KVDecision
from serving.policy.scheduler import Admission, ScheduleConfig, Strategy
from serving.policy.workload import Decision
from serving.runner import RunResult


class Source(enum.Enum):
    """Where a strategy's predicted lengths come from."""

    NONE = "none"
    PREDICTOR = "predictor"
    PERCEPTION = "perception"
    ORACLE = "oracle"


class BenchStrategy(enum.Enum):
    """The table's rows: the paper's ablation plus perception-only and oracle predictions (static batches), continuous
    batching with each admission policy on our pool (cb-*), and the real vLLM with the same policies (vllm-*)."""

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
    CB_TUNED = "cb-tuned"
    """Our pool, admission rule and order chosen for the served workload by simulation (serving.policy.kv_tuning,
    the predictor's held-out errors); FCFS when no choice is predicted to beat it."""
    VLLM_FCFS = "vllm-fcfs"
    """vLLM as a user runs it: every request at once, its own scheduler, its defaults."""
    VLLM_SJF = "vllm-sjf"
    """vLLM with each request's priority = its predicted length (shortest first)."""
    VLLM_SJF_ORACLE = "vllm-sjf-oracle"
    """vLLM with priority = the length vLLM itself gave in vllm-fcfs (the ceiling of ordering)."""
    VLLM_FCR = "vllm-fcr"
    """vLLM, SJF with FCR caps: each request capped at its predicted bin, the cut-short ones recomputed."""
    VLLM_TUNED = "vllm-tuned"
    """vLLM with the order (and, under seqsched's scheduler class, the admission rule) chosen like cb-tuned's, on
    vLLM's own measured step cost; vLLM's defaults (vllm-fcfs) when nothing is predicted to beat them."""

    @property
    def pool(self) -> bool:
        """True for the rows served by our continuous-batching pool (cb-*)."""
        return self.value.startswith("cb-")

    @property
    def vllm(self) -> bool:
        """True for the rows served by vLLM (vllm-*)."""
        return self.value.startswith("vllm-")

    @property
    def continuous(self) -> bool:
        """True for the rows served by a continuous-batching engine (our pool or vLLM)."""
        return self.pool or self.vllm

    @property
    def base(self) -> BenchStrategy:
        """The row whose outputs this row's are checked against and whose lengths its oracle takes: the same engine's
        plain run (vanilla on our engine, vllm-fcfs on vLLM: kernels differ between engines)."""
        return BenchStrategy.VLLM_FCFS if self.vllm else BenchStrategy.VANILLA

    @property
    def tuned(self) -> bool:
        """True for the continuous rows whose policy is chosen per workload by simulation (cb-tuned, vllm-tuned)."""
        return self in (BenchStrategy.CB_TUNED, BenchStrategy.VLLM_TUNED)

    @property
    def admission(self) -> Admission:
        """The admission policy of a continuous row (auto for the static rows; a tuned row's starting point, FCFS,
        which its decision replaces)."""
        if not self.continuous:
            return Admission.AUTO
        if self in (BenchStrategy.CB_FCFS, BenchStrategy.VLLM_FCFS) or self.tuned:
            return Admission.FCFS
        return Admission.SJF_FCR if self in (BenchStrategy.CB_SJF_FCR, BenchStrategy.VLLM_FCR) else Admission.SJF

    @property
    def strategy(self) -> Strategy:
        """The scheduler strategy this row runs (a continuous row: its policy's static counterpart)."""
        if self.continuous:
            return {Admission.FCFS: Strategy.VANILLA, Admission.SJF: Strategy.SEQSCH}.get(self.admission, Strategy.FCR)
        return Strategy(self.value.split("-")[0])

    @property
    def source(self) -> Source:
        """Where its predictions come from."""
        if self in (BenchStrategy.VANILLA, BenchStrategy.CB_FCFS, BenchStrategy.VLLM_FCFS):
            return Source.NONE
        if self is BenchStrategy.FCR_PERCEPTION:
            return Source.PERCEPTION
        if self in (BenchStrategy.FCR_ORACLE, BenchStrategy.CB_SJF_ORACLE, BenchStrategy.VLLM_SJF_ORACLE):
            return Source.ORACLE
        return Source.PREDICTOR

    @property
    def uses_policy(self) -> bool:
        """True for the static rows whose bins, VBS and margin come from the policy (vbs, fcr, fcr-*): the rows
        that can run the paper's policy beside the tuned one (@paper)."""
        return not self.continuous and self.strategy in (Strategy.VBS, Strategy.FCR)


ALL_STRATEGIES = tuple(BenchStrategy)
HF_STRATEGIES = tuple(strategy for strategy in BenchStrategy if not strategy.vllm)

PAPER_SUFFIX = "@paper"


@dataclass(frozen=True)
class BenchRow:
    """A row of the table: a strategy, under the row's own policy (tuned when tuning ran) or, `paper`, under the
    starting (the paper's) policy."""

    strategy: BenchStrategy
    paper: bool = False

    @property
    def name(self) -> str:
        """The row's name in tables: the strategy, with `@paper` for the starting policy's twin."""
        return self.strategy.value + (PAPER_SUFFIX if self.paper else "")


def bench_rows(strategies: Sequence[BenchStrategy], paper_rows: Sequence[BenchStrategy] = ()) -> list[BenchRow]:
    """The rows in run order: vanilla (and vllm-fcfs with any vLLM row), then each strategy followed by its @paper
    twin when asked for."""
    rows = [BenchRow(BenchStrategy.VANILLA)]
    if any(strategy.vllm for strategy in strategies) and BenchStrategy.VLLM_FCFS not in strategies:
        rows.append(BenchRow(BenchStrategy.VLLM_FCFS))  # vLLM's base: its outputs and oracle lengths
    for strategy in strategies:
        if strategy is BenchStrategy.VANILLA:
            continue
        rows.append(BenchRow(strategy))
        if strategy in paper_rows:
            rows.append(BenchRow(strategy, paper=True))
    return rows


@dataclass
class StrategyRun:
    """One row's run in one round."""

    strategy: BenchStrategy
    round: int
    result: RunResult
    predicted: list[int] | None
    same_as_vanilla: int
    decision: Decision | None = None
    same_as_base: int | None = None
    """A vLLM row: requests whose output equals vllm-fcfs's (the same engine's; None for our engine's rows, whose
    base is vanilla)."""
    """The tuning decision this row served (None: the configured policy)."""
    simulated: dict[str, float] | None = None
    """What the cost model predicts this run cost (the same plan on the true lengths)."""
    paper: bool = False
    """Run under the starting (paper's) policy while the other scheduled rows run the tuned one."""
    fallback: str | None = None
    """Why a continuous row served FCFS without predicting (every request fit at once), None when it ran its own
    policy."""
    kv_decision: KVDecision | None = None
    """A tuned continuous row's (cb-tuned, vllm-tuned) admission rule and order, None for the other rows."""

    @property
    def name(self) -> str:
        """The row this run belongs to."""
        return BenchRow(self.strategy, self.paper).name


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
    """Simulated vs measured time per row (the median round)."""
    requests: list[Request] = field(default_factory=list)
    """The requests served (fewer than offered when --budget_s sized the run)."""
    paper_policy: ScheduleConfig | None = None
    """The starting policy of the @paper rows (None: no such rows)."""
    sizing: dict[str, Any] = field(default_factory=dict)
    """How --budget_s sized the run (empty without a budget)."""
    complete: bool = True
    """False for the result so far, written while rows still run."""

    def row(self, strategy: BenchStrategy | str) -> dict[str, Any]:
        """The summary row of a strategy (or of a row name such as fcr@paper)."""
        name = strategy.value if isinstance(strategy, BenchStrategy) else strategy
        return next(row for row in self.rows if row["strategy"] == name)


RowItem = TypeVar("RowItem", BenchStrategy, BenchRow)


def _strategy_of(item: BenchStrategy | BenchRow) -> BenchStrategy:
    return item.strategy if isinstance(item, BenchRow) else item


def row_name(item: BenchStrategy | BenchRow | str) -> str:
    """A row's name in tables."""
    if isinstance(item, str):
        return item
    return item.name if isinstance(item, BenchRow) else item.value


def round_order(items: Sequence[RowItem], index: int) -> list[RowItem]:
    """The order of round `index`: vanilla first in round 0 (the oracle needs its lengths), then our engine's rows,
    then vllm-fcfs (vLLM's oracle) and vLLM's rows; later rounds rotate that by one per round so no row always runs
    first or last."""
    bases = (BenchStrategy.VANILLA, BenchStrategy.VLLM_FCFS)
    vanilla = [item for item in items if _strategy_of(item) is BenchStrategy.VANILLA]
    vllm_base = [item for item in items if _strategy_of(item) is BenchStrategy.VLLM_FCFS]
    others = [item for item in items if _strategy_of(item) not in bases]
    # Every row of our engine first, then vLLM's (its base first): vLLM started in this process slows torch's own
    # forwards by ~5% (measured), so our rows run before it starts.
    ours = [item for item in others if not _strategy_of(item).vllm]
    theirs = [item for item in others if _strategy_of(item).vllm]
    ordered = [*(vanilla[:1] or [BenchStrategy.VANILLA]), *ours, *vllm_base[:1], *theirs]
    if index == 0:
        return ordered  # type: ignore[return-value]
    shift = index % len(ordered)
    return ordered[shift:] + ordered[:shift]  # type: ignore[return-value]


def strategy_config(strategy: BenchStrategy, policy: ScheduleConfig, vanilla_batch_size: int) -> ScheduleConfig:
    """The schedule one row runs (a cb-* row: its admission policy with the tuned margin and bins)."""
    if strategy.continuous:
        return replace(policy, strategy=strategy.strategy, policy=strategy.admission)
    if strategy.strategy in (Strategy.VANILLA, Strategy.SEQSCH):
        return replace(policy, strategy=strategy.strategy, batch_size=vanilla_batch_size, policy=Admission.AUTO)
    return replace(policy, strategy=strategy.strategy, policy=Admission.AUTO)


def same_as_vanilla(result: RunResult, vanilla: RunResult, by_length: bool = False) -> int:
    """Requests whose output equals vanilla's: token for token, or (replay, where text is noise) in length."""
    if by_length:
        return sum(a.num_tokens == b.num_tokens for a, b in zip(result.records, vanilla.records, strict=True))
    return sum(a.token_ids == b.token_ids for a, b in zip(result.records, vanilla.records, strict=True))


def median_runs(
    runs: Sequence[StrategyRun], rows: Sequence[BenchStrategy | BenchRow | str]
) -> tuple[dict[str, StrategyRun], dict[str, list[float]]]:
    """Each row's median round by samples/s (by row name), and its samples/s over all rounds."""
    chosen: dict[str, StrategyRun] = {}
    spread: dict[str, list[float]] = {}
    for name in dict.fromkeys(row_name(item) for item in rows):
        mine = sorted((item for item in runs if item.name == name), key=lambda r: r.result.metrics.samples_per_s)
        if mine:
            chosen[name] = mine[(len(mine) - 1) // 2]
            spread[name] = [item.result.metrics.samples_per_s for item in mine]
    return chosen, spread


def _schedule(item: StrategyRun) -> str:
    if item.fallback is not None:
        return "fcfs (all fit at once)"
    if item.kv_decision is not None:
        return "fcfs (no gain predicted)" if item.kv_decision.fallback else item.kv_decision.policy.name
    if item.paper:
        return "paper"
    if item.decision is None:
        return ""
    return "vanilla (fallback)" if item.decision.fallback else "tuned"


def summarize(
    runs: Sequence[StrategyRun], rows: Sequence[BenchStrategy | BenchRow | str]
) -> tuple[list[dict], list[dict]]:
    """One row per table row (its median round by samples/s) with speedup vs vanilla and share of the oracle (the
    oracle under the same policy: fcr-oracle@paper for @paper rows), and samples/s and mean latency as ratios to
    cb-fcfs and to vllm-fcfs when they ran (vLLM rows: outputs also compared with vllm-fcfs's)."""
    chosen, spread = median_runs(runs, rows)
    base = chosen["vanilla"].result.metrics.samples_per_s
    cb_fcfs = chosen.get(BenchStrategy.CB_FCFS.value)
    vllm_fcfs = chosen.get(BenchStrategy.VLLM_FCFS.value)
    table_rows, time_rows = [], []
    for name, item in chosen.items():
        metrics = item.result.metrics
        oracle_name = BenchRow(BenchStrategy.FCR_ORACLE, item.paper).name
        oracle = chosen.get(oracle_name) or chosen.get(BenchStrategy.FCR_ORACLE.value)
        oracle_sps = oracle.result.metrics.samples_per_s if oracle else None
        values = spread[name]
        versus = {}
        for key, reference_run in (("cb_fcfs", cb_fcfs), ("vllm_fcfs", vllm_fcfs)):
            if reference_run is not None:
                reference = reference_run.result.metrics
                versus[f"speed_vs_{key}"] = metrics.samples_per_s / reference.samples_per_s
                versus[f"latency_vs_{key}"] = metrics.latency_mean_s / reference.latency_mean_s
        if item.same_as_base is not None:
            versus["same_as_vllm_fcfs"] = f"{item.same_as_base}/{metrics.requests}"
        table_rows.append(
            {
                **metrics.row(),
                **versus,
                "strategy": name,
                "schedule": _schedule(item),
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
                "strategy": name,
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
    return table_rows, time_rows


def continuous_rows(
    runs: Sequence[StrategyRun],
    rows: Sequence[BenchStrategy | BenchRow | str],
    slots: int | None,
    vllm_slots: int | None = None,
) -> list[dict[str, Any]]:
    """The continuous rows' engine counters (of the round the table shows): engine steps, mean rows per step, ms
    per step, the share of attended context that was alignment padding, prefills (our pool's; vLLM mixes prefill
    chunks into its steps). slots: our pool's; vllm_slots: vLLM's max_num_seqs."""
    out = []
    for name, item in median_runs(runs, rows)[0].items():
        if not item.strategy.continuous:
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
                "strategy": name,
                "slots": vllm_slots if item.strategy.vllm else slots,
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


def simulation_rows(
    runs: Sequence[StrategyRun], rows: Sequence[BenchStrategy | BenchRow | str]
) -> list[dict[str, Any]]:
    """Per row (its median round, as in the table): the simulated prefill, decode and generation time next to the
    measured ones, and the relative error of the total (the cost model's check: within 10%)."""
    out = []
    for name, item in median_runs(runs, rows)[0].items():
        if item.simulated is None:
            continue
        metrics, simulated = item.result.metrics, item.simulated
        measured = metrics.prefill_s + metrics.decode_s
        out.append(
            {
                "strategy": name,
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


__all__ = [
    "ALL_STRATEGIES",
    "HF_STRATEGIES",
    "BenchResult",
    "BenchRow",
    "BenchStrategy",
    "Source",
    "StrategyRun",
    "bench_rows",
    "continuous_rows",
    "median_runs",
    "round_order",
    "row_name",
    "same_as_vanilla",
    "simulation_rows",
    "strategy_config",
    "summarize",
]
