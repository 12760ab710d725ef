"""`seqsched bench`: the paper's table, rerun here. Several strategies serve the same prompts in one process, one
model, repeated and interleaved so machine noise hits them alike; greedy decoding, so the oracle's lengths are
exactly the lengths vanilla produced and every strategy's outputs can be checked against vanilla's.

The static rows (vanilla, seqsch, vbs, fcr, ...) run the paper's batches; the cb-* rows run the same loaded model as
a continuous-batching pool (seqsched.engines.hf_continuous) with an admission policy (serving.policy.admission): FCFS,
SJF by the predictor, SJF by the oracle, SJF with FCR caps. Every request is submitted at t=0, as in an offline
batch job, so latencies are completion times from the start of the run.

With --engine.replay (and --model.random_init) every request generates its recorded length on a random-weight
model of the served architecture (seqsched.engines.replay): the paper's table on a machine without the weights,
timing faithful, text not (static rows only). --budget_s then serves as many prompts as the simulator fits in the
time left.

Writes <out>.json (every run, per-request lengths and predictions, the tuned policy), <out>.md (the table and
where the time goes) and <out>.png (bar charts), rewritten after every run so a cut-short bench keeps its rows.
The rows and their summaries are in serving.bench.rows, the setup (predictions, policies, tuner, sizing) in
serving.bench.setup, the files in serving.bench.report.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from seqsched.engines.api import Batching, Engine
from seqsched.engines.config import COUNTING_SCHEDULER, EngineConfig, EngineKind
from seqsched.engines.selection import build_engine, set_torch_threads, with_batching
from seqsched.errors import SeqschedError, require, require_at_least
from seqsched.files import check_writable, write_json, write_text
from seqsched.model_specs import ModelConfig
from seqsched.requests import InputFormat, Request, read_requests
from serving.bench.report import command_line, describe_setup, markdown, plot, replay_info, report_dict
from serving.bench.rows import (
    ALL_STRATEGIES,
    HF_STRATEGIES,
    BenchResult,
    BenchRow,
    BenchStrategy,
    Source,
    StrategyRun,
    bench_rows,
    continuous_rows,
    round_order,
    same_as_vanilla,
    simulation_rows,
    strategy_config,
    summarize,
)
from serving.bench.setup import Policies, Predictions, Sizer, bench_tuner, continuous_pool
from serving.measure.autotune import (
    Tuner,
    all_at_once,
    continuous_model,
    cost_engine,
    engine_cost_config,
    grid_max_context,
    own_limits,
    prompt_lengths,
)
from serving.measure.costmodel import CostConfig, load_or_measure, machine_name
from serving.measure.memory import MemoryConfig
from serving.policy.admission import policy_for
from serving.policy.scheduler import Admission, ScheduleConfig, Strategy
from serving.policy.simulate_continuous import simulate_continuous
from serving.policy.simulate_kv import simulate_kv
from serving.policy.stepcost import CostModel
from serving.policy.workload import TuneConfig
from serving.runner import RunOptions, RunResult, run

log = logging.getLogger(__name__)

__all__ = [
    "ALL_STRATEGIES",
    "HF_STRATEGIES",
    "BenchConfig",
    "BenchResult",
    "BenchRow",
    "BenchStrategy",
    "Source",
    "StrategyRun",
    "bench",
    "bench_requests",
    "default_strategies",
    "markdown",
    "round_order",
    "run_bench",
    "select_by_label",
    "simulate_pool",
    "strategy_config",
    "summarize",
]


def default_strategies() -> tuple[BenchStrategy, ...]:
    """Every row but the tuned continuous ones (they need --tune.data); vLLM's only where `--engine.kind auto` means
    vLLM (installed, and not overridden)."""
    rows = ALL_STRATEGIES if EngineConfig().resolved_kind() is EngineKind.VLLM else HF_STRATEGIES
    return tuple(row for row in rows if not row.tuned)


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
    strategies: tuple[BenchStrategy, ...] = field(default_factory=default_strategies)
    """Rows to run: vanilla, seqsch, vbs, fcr, fcr-perception, fcr-oracle (static batches on our engine; vanilla always
    runs: it is the base), cb-fcfs, cb-sjf, cb-sjf-oracle, cb-sjf-fcr (our continuous pool of `--engine.slots` rows,
    or as many as the measured step cost suggests: see serving.measure.slots), vllm-fcfs, vllm-sjf, vllm-sjf-oracle,
    vllm-fcr (the real vLLM with `--engine.vllm` settings; vllm-fcfs runs with any of them: their base), cb-tuned and
    vllm-tuned (admission rule and order chosen for the served workload by simulation on the predictor's held-out
    errors, FCFS when nothing is predicted to beat it: need --tune.data). Default: all but the tuned rows (the vllm-*
    rows where vLLM is installed)."""
    repeats: int = 1
    """Rounds over all strategies; each round rotates their order. The table shows each strategy's median round."""
    vanilla_batch_size: int = 16
    """The paper's vanilla batch size (seqsch uses it too, so that row shows what sorting alone does)."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """With `--tune.data HELD_OUT_LENGTHS` (or `--tune.lengths FILE`, no datasets library): the fcr row's margin,
    bins and VBS are tuned by simulation on the served prompts' predicted and prompt lengths with the predictor's
    held-out errors (seqsch, vbs and fcr-perception use that policy too); fcr-oracle is tuned on the true
    lengths. An fcr row whose schedule is not predicted to beat vanilla by --tune.min_gain serves vanilla batches
    (its row says so)."""
    paper_rows: tuple[BenchStrategy, ...] = ()
    """With tuning, these rows (of vbs, fcr, fcr-perception, fcr-oracle) also run under the starting (the paper's)
    policy, as ROW@paper, each right after its tuned twin."""
    cost: CostConfig = field(default_factory=CostConfig)
    """The step cost the simulator uses: measured once per machine and model over batch sizes x contexts, cached."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    """The KV-cache budget of a batch: rows x (prompt + cap) stays within it."""
    simulate: bool = True
    """Show each row's simulated time (the same cost model) beside its measured time."""
    budget_s: float | None = None
    """Length replay only: serve the most prompts (a prefix of the selection) whose rows the simulator, with the
    measured step cost and the replayed lengths, predicts to finish within this many seconds of the bench's start."""
    select_lengths: str | None = None
    """A length file in the paper's format ({"id", "L_t0.0", ...}): keep only prompts whose paper label (the max
    over temperatures, rounded up to 50) is at least select_min_label (after --offset, before --count)."""
    select_min_label: int = 0
    """The label threshold of --select_lengths (250 with the paper's labels: answers that mostly reach the limit)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The engine; static rows run static batches on it and cb-* rows a continuous pool of `--engine.slots` rows
    over the same loaded model (whatever `--engine.batching` says; vLLM serves every row itself). With
    `--engine.replay FILE` every request generates its recorded length (static rows only)."""
    torch_threads: int | None = None
    """CPU threads for torch (default: torch's choice)."""
    out: str = "outputs/bench/bench"
    """Writes OUT.json, OUT.md and OUT.png (the first two rewritten after every run)."""
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 0, "offset")
        require_at_least(self, 1, "count", "repeats", "vanilla_batch_size", "torch_threads")
        require(self.budget_s is None or self.budget_s > 0, "budget_s", f"must be > 0, got {self.budget_s}")
        require(not self.paper_rows or bool(self.tune.held_out), "paper_rows", "needs --tune.data or --tune.lengths")
        tuned = [row.value for row in self.strategies if row.tuned]
        require(
            not tuned or bool(self.tune.held_out),
            "strategies",
            f"{tuned} choose their policy from the predictor's held-out errors: give --tune.data or --tune.lengths",
        )
        other = [row.value for row in self.paper_rows if not row.uses_policy]
        require(not other, "paper_rows", f"{other} do not use the policy's bins and VBS (vbs, fcr, fcr-*)")
        missing = [row.value for row in self.paper_rows if row not in self.strategies]
        require(not missing, "paper_rows", f"{missing} must be among --strategies too")
        if self.engine.replay is not None:
            continuous = [row.value for row in self.strategies if row.continuous]
            require(not continuous, "strategies", f"length replay runs static rows only: drop {continuous}")
            perception = BenchStrategy.FCR_PERCEPTION in self.strategies
            require(not perception, "strategies", "fcr-perception asks a random-weight model (replay): drop it")


def run_bench(
    engine: Engine,
    requests: Sequence[Request],
    config: BenchConfig,
    tuner: Tuner | None = None,
    predictions: Predictions | None = None,
    *,
    started: float | None = None,
    on_run: Callable[[BenchResult], None] | None = None,
    vllm: Callable[[], Engine] | None = None,
) -> BenchResult:
    """Run every row `repeats` times, interleaved, and summarize. tuner: the step cost (for the simulated times and
    budget sizing), KV budget and held-out errors (for tuning on these requests); None runs the configured policy.
    predictions: the predictor sources, when already loaded (bench_tuner loads the predictor first). started: when
    the bench began (perf_counter; --budget_s counts from it); on_run: called with the result so far after every
    run (the bench rewrites its files, so a cut-short run keeps what finished); vllm: builds the engine of the
    vllm-* rows (called once, when the first of them is due: after our engine's rows of the first round)."""
    if not requests:
        raise SeqschedError("no prompts to benchmark")
    if config.repeats < 1:
        raise SeqschedError(f"--repeats must be >= 1, got {config.repeats}")
    if config.policy is not Admission.AUTO:
        raise SeqschedError("bench: each cb-* row sets its own admission policy (cb-fcfs, cb-sjf, ...); drop --policy")
    started = time.perf_counter() if started is None else started
    rows = bench_rows(config.strategies, config.paper_rows)
    static = with_batching(engine, Batching.STATIC)
    if static.batching is not Batching.STATIC:
        raise SeqschedError("bench: the base engine must run static batches (our HF engine); vLLM serves vllm-* rows")
    continuous = any(row.strategy.pool for row in rows)
    if any(row.strategy.vllm for row in rows) and vllm is None:
        raise SeqschedError("bench: vllm-* rows need the vLLM engine (install it: make install)")
    vllm_engine: Engine | None = None
    predictions = predictions or Predictions(static, config, requests)
    policy = replace(config.schedule(), strategy=Strategy.FCR, policy=Admission.AUTO)
    if tuner is not None:
        policy = tuner.apply_budget(policy)
    requests, sized, sizing = _sized(static, config, rows, tuner, predictions, policy, started)
    if len(requests) != len(predictions.requests):
        predictions = predictions.for_requests(requests)
    if tuner is not None and tuner.errors_by_quantile:
        predictions.quantiles = tuple(tuner.errors_by_quantile)
    pool, slots = (static, {})
    if continuous:
        pool, slots = continuous_pool(engine, requests, config, tuner.cost if tuner is not None else None)
        print(f"continuous rows: {slots['slots']} slots ({slots['rule']})", flush=True)
    prompts = prompt_lengths(engine, requests)
    limits = own_limits(requests, policy.limit)
    policies = Policies(config, policy, predictions, tuner, prompts, limits)
    if sized is not None:
        policies.decisions = sized.decisions  # tuned for this count while sizing
    by_length = not getattr(engine, "text_faithful", True)
    options = RunOptions(progress=config.progress)
    runs: list[StrategyRun] = []
    vanilla: RunResult | None = None
    vllm_base: RunResult | None = None
    paper_policy = policy if any(row.paper for row in rows) else None

    def result_so_far(complete: bool) -> BenchResult:
        assert vanilla is not None
        if complete and tuner is not None and config.simulate:
            true = [record.num_tokens for record in vanilla.records]
            for item in runs:
                if item.strategy.vllm:
                    continue  # the simulator models our engines' steps, not vLLM's
                if item.strategy.continuous:
                    summary = simulate_pool(true, item.predicted, item.result.config, pool, slots, tuner, prompts)
                else:
                    summary = tuner.simulate_run(item.predicted, true, prompts, limits, item.result.config).summary()
                item.simulated = {key: float(value) for key, value in summary.items() if key != "strategy"}
        table_rows, time_rows = summarize(runs, rows)
        tuning: dict[str, Any] = dict(tuner.info) if tuner is not None else {}
        tuning["decisions"] = {strategy.value: decision.as_dict() for strategy, decision in policies.decisions.items()}
        if policies.kv_decisions:
            tuning["kv_decisions"] = {row.value: item.as_dict() for row, item in policies.kv_decisions.items()}
        tuning.update(step_costs)
        vllm_slots = getattr(vllm_engine, "max_num_seqs", None)
        pool_rows = continuous_rows(runs, rows, slots.get("slots"), vllm_slots)
        return BenchResult(
            runs,
            table_rows,
            time_rows,
            policy,
            tuning,
            pool_rows,
            slots,
            simulation_rows(runs, rows),
            list(requests),
            paper_policy,
            sizing,
            complete,
        )

    step_costs: dict[str, Any] = {}
    measured_costs: dict[str, CostModel] = {}

    def row_cost(strategy: BenchStrategy, serving: Engine) -> CostModel:
        """The step cost a tuned row simulates: our engine's (the tuner's), or vLLM's own, timed once (cached)."""
        if tuner is None:
            raise SeqschedError(f"{strategy.value} needs the step cost and held-out errors: give --tune.data")
        if not strategy.vllm:
            return tuner.cost
        if "vllm" not in measured_costs:
            grid = engine_cost_config(serving, config.cost)
            context = grid_max_context(policy.limit, prompts)
            measured = load_or_measure(cost_engine(serving), config.model, "vllm", grid, context, progress=True)
            measured_costs["vllm"] = measured.cost
            step_costs["vllm_step_cost"] = {"source": str(measured.path), "model": measured.chosen}
        return measured_costs["vllm"]

    for index in range(config.repeats):
        for row in round_order(rows, index):
            strategy = row.strategy
            if strategy.vllm and vllm_engine is None:
                assert vllm is not None
                print("starting vLLM for the vllm-* rows", flush=True)
                vllm_engine = vllm()
            serving = vllm_engine if strategy.vllm else (pool if strategy.continuous else static)
            assert serving is not None
            fallback = None
            if strategy.continuous and strategy.source is Source.PREDICTOR:
                # Every request fits at once: no order to choose, so no prediction to pay for (the oracle rows
                # still order, to show what ordering would have bought).
                fallback = all_at_once(serving, prompts, limits, tuner.length_stats if tuner is not None else None)
            if fallback is not None:
                print(f"{row.name}: {fallback}: FCFS serves, no prediction", flush=True)
                base_row = BenchStrategy.VLLM_FCFS if strategy.vllm else BenchStrategy.CB_FCFS
                predicted, predictor_s, shared_prefill_s = None, 0.0, 0.0
                cfg, decision = strategy_config(base_row, policy, config.vanilla_batch_size), None
            else:
                predicted, predictor_s, shared_prefill_s = predictions.get(
                    strategy.source, share_prefill=not strategy.continuous, vllm=strategy.vllm
                )
                cfg, decision = policies.for_row(row, predicted)
            quantile = decision.details.get("quantile") if decision is not None else None
            if quantile is not None:  # risk-aware caps: lengths at the quantile the tuner chose
                predicted = predictions.quantile_lengths[quantile]
            tuning_s = decision.tuning_s if decision is not None else 0.0
            kv_decision = None
            if strategy.tuned and fallback is None:
                assert predicted is not None
                cost = row_cost(strategy, serving)
                kv_decision = policies.kv_decision(strategy, serving, predicted, cost)
                cfg, tuning_s = kv_decision.policy.config(cfg), kv_decision.tuning_s
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
            if strategy is BenchStrategy.VLLM_FCFS and vllm_base is None:
                vllm_base = result
                predictions.vllm_oracle = [record.num_tokens for record in result.records]
            same = same_as_vanilla(result, vanilla, by_length)
            same_base = same_as_vanilla(result, vllm_base) if strategy.vllm and vllm_base is not None else None
            runs.append(
                StrategyRun(
                    strategy,
                    index,
                    result,
                    predicted,
                    same,
                    decision,
                    paper=row.paper,
                    same_as_base=same_base,
                    fallback=fallback,
                    kv_decision=kv_decision,
                )
            )
            metrics = result.metrics
            print(
                f"round {index + 1}/{config.repeats} {row.name}: {metrics.samples_per_s:.3f} samples/s, "
                f"mean latency {metrics.latency_mean_s:.1f} s, {metrics.total_s:.1f} s, outputs "
                f"{'as long as' if by_length else 'equal to'} vanilla's {same}/{metrics.requests}"
                + (f", vllm-fcfs's {same_base}/{metrics.requests}" if same_base is not None else ""),
                flush=True,
            )
            if on_run is not None:
                on_run(result_so_far(complete=False))
    return result_so_far(complete=True)


def simulate_pool(
    true: Sequence[int],
    predicted: Sequence[int] | None,
    cfg: ScheduleConfig,
    pool: Engine,
    slots: dict[str, Any],
    tuner: Tuner,
    prompts: Sequence[int],
) -> dict[str, float | int]:
    """What a continuous row is predicted to cost on our pool: its policy's order (and KV reservations) on the
    pool's own model in serving.policy.simulate_kv (continuous_model: its KV budget if any, the served prompts, padded
    prefills and steps, admit_min, the step cost), or with FCR caps (a recompute pass)
    serving.policy.simulate_continuous (the mean prompt). row_steps as the run's records count them: every token
    sampled, the first of each admission (from its prefill) included, and no retired row."""
    limits = [cfg.limit] * len(true)
    policy = policy_for(cfg)
    submission = policy.first(predicted, limits, cfg)
    model = continuous_model(pool)
    if submission.caps == limits and model is not None:
        kv_run = simulate_kv(
            true, prompts, limits, model, tuner.cost, submission.priorities, submission.reserves, submission.hold
        )
        return dict(kv_run.summary())
    run = simulate_continuous(
        true,
        predicted,
        policy,
        cfg,
        int(slots["slots"]),
        tuner.cost,  # type: ignore[arg-type]
        round(sum(prompts) / len(prompts)) if prompts else 64,
        getattr(pool, "admit_min", None),
    )
    sim = run.summary()
    sim["row_steps"] = run.row_steps - run.retired_row_steps + len(true) + len(run.failed)
    return sim


def _sized(
    engine: Engine,
    config: BenchConfig,
    rows: Sequence[BenchRow],
    tuner: Tuner | None,
    predictions: Predictions,
    policy: ScheduleConfig,
    started: float,
) -> tuple[list[Request], Policies | None, dict[str, Any]]:
    """The requests to serve: all of them, or under --budget_s the prefix that fits (with the policies tuned for
    it while sizing)."""
    requests = list(predictions.requests)
    if config.budget_s is None:
        return requests, None, {}
    if tuner is None:
        raise SeqschedError("--budget_s sizes with the measured step cost: not on a continuous-batching engine")
    count, policies, sizing = Sizer.for_engine(engine, config, rows, tuner, predictions, policy).size(started)
    print(
        f"budget {config.budget_s:.0f} s: {count} of {len(requests)} prompts fit (simulated seconds per row: "
        f"{sizing['simulated_row_s']})",
        flush=True,
    )
    return requests[:count], policies, sizing


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


def bench(config: BenchConfig, engine: Engine | None = None) -> BenchResult:
    """`seqsched bench`: every strategy on the same prompts; writes OUT.json, OUT.md and OUT.png."""
    if not config.input:
        raise SeqschedError("--input is required (a prompts file; the recipe names the shared validation set)")
    started = time.perf_counter()
    out = Path(config.out)
    for suffix in (".json", ".md", ".png"):  # before the model loads: hours of measurement must land somewhere
        check_writable(out.with_suffix(suffix), "out")
    set_torch_threads(config.torch_threads)
    requests = bench_requests(config)
    print(f"{len(requests)} prompts from {config.input}; strategies: {', '.join(s.value for s in config.strategies)}")
    # The static rows need static batches on our engine; the cb-* rows get a pool over the same model, the vllm-* rows
    # the real vLLM, started when their turn comes (run_bench).
    engine = engine or build_engine(
        replace(config.engine, kind=EngineKind.HF, batching=Batching.STATIC), config.model, requests
    )

    def start_vllm() -> Engine:
        # vLLM's own scheduler, counting its preemptions (seqsched.engines.vllm_scheduler.CountingScheduler).
        vllm_settings = config.engine.vllm
        if vllm_settings.scheduler_cls is None:
            vllm_settings = replace(vllm_settings, scheduler_cls=COUNTING_SCHEDULER)
        return build_engine(replace(config.engine, kind=EngineKind.VLLM, vllm=vllm_settings), config.model)

    replay = replay_info(engine, config)
    predictions = Predictions(engine, config, requests)
    tuner = bench_tuner(config, engine, predictions)
    import torch

    device = machine_name()
    command = command_line()
    extra: dict[str, Any] = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": device,
        "torch_threads": torch.get_num_threads(),
        "model": config.model.spec,
        "engine": "hf" + (" + vllm" if any(s.vllm for s in config.strategies) else ""),
        "replay": replay,
    }

    def write(result: BenchResult) -> str:
        served = result.requests or requests
        extra.update(slots=result.slots.get("slots"), prompts=len(served), wall_s=time.perf_counter() - started)
        write_json(out.with_suffix(".json"), report_dict(result, config, served, extra))
        model_text = f"random-weight {config.model.random_init} (length replay)" if replay else config.model.spec
        header = "\n\n".join(
            [
                f"`{command}`",
                f"{extra['date']}, {device}, torch threads {extra['torch_threads']}; model {model_text} "
                f"({extra['engine']} engine); {len(served)} prompts, limit {config.limit}, greedy; "
                f"{config.repeats} round(s), median shown; bench wall time {extra['wall_s']:.0f} s"
                + ("" if result.complete else " (incomplete: rows still running)"),
                *describe_setup(result, replay),
            ]
        )
        text = markdown(result, header)
        write_text(out.with_suffix(".md"), text)
        return text

    result = run_bench(engine, requests, config, tuner, predictions, started=started, on_run=write, vllm=start_vllm)
    text = write(result)
    title = f"{config.model.random_init} (length replay, random weights)" if replay else config.model.spec
    png = plot(result, out.with_suffix(".png"), f"{title}, {len(result.requests)} prompts, {device}")
    print("\n" + text)
    wrote = [str(out.with_suffix(".json")), str(out.with_suffix(".md")), *([str(png)] if png else [])]
    print(f"wrote {', '.join(wrote)}", file=sys.stderr)
    return result
