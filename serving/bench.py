"""`seqsched bench`: the paper's table, rerun here. Several strategies serve the same prompts in one process, one
engine, repeated and interleaved so machine noise hits them alike; greedy decoding, so the oracle's lengths are
exactly the lengths vanilla produced and every strategy's outputs can be checked against vanilla's.

Writes <out>.json (every run, per-request lengths and predictions, the tuned policy), <out>.md (the table and
where the time goes) and <out>.png (bar charts). With --engine.replay (and --model.random_init) every request
generates its recorded length on a random-weight model of the served architecture: the paper's table on a
machine without the weights (timing faithful, text not). Setup (step cost, tuning, budget sizing) is in
serving.bench_setup, the files in serving.bench_report.
"""

from __future__ import annotations

import enum
import logging
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from seqsched.engines.api import Engine
from seqsched.engines.config import EngineConfig
from seqsched.engines.selection import build_engine, set_torch_threads
from seqsched.errors import SeqschedError, require
from seqsched.files import write_json, write_text
from seqsched.model_specs import ModelConfig
from seqsched.random_models import REPLAY_NOTE, parameter_count
from seqsched.requests import InputFormat, Request, read_requests
from serving.bench_report import TABLE_COLUMNS, TIME_COLUMNS, describe_setup, device_line, markdown, plot, report_dict
from serving.bench_setup import (
    HeldOut,
    RowPlan,
    fit_count,
    held_out_from_dataset,
    held_out_from_lengths,
    measure_cost,
    starting_policy,
    tune_on,
    tune_schedule,
    tuning_estimate_s,
)
from serving.predictors import PredictorSource, RequestPredictor, parse_predictor, resolve_predictor
from serving.runner import RunOptions, RunResult, run
from serving.scheduler import ScheduleConfig, Strategy
from serving.simulate import StepCost

__all__ = [
    "TABLE_COLUMNS",
    "TIME_COLUMNS",
    "BenchConfig",
    "BenchResult",
    "BenchRow",
    "bench",
    "run_bench",
    "tune_schedule",
]

log = logging.getLogger(__name__)


class Source(enum.Enum):
    """Where a strategy's predicted lengths come from."""

    NONE = "none"
    PREDICTOR = "predictor"
    PERCEPTION = "perception"
    ORACLE = "oracle"


class BenchStrategy(enum.Enum):
    """The table's rows: the paper's ablation plus perception-only and oracle predictions."""

    VANILLA = "vanilla"
    SEQSCH = "seqsch"
    VBS = "vbs"
    FCR = "fcr"
    FCR_PERCEPTION = "fcr-perception"
    FCR_ORACLE = "fcr-oracle"

    @property
    def strategy(self) -> Strategy:
        """The scheduler strategy this row runs."""
        return Strategy(self.value.split("-")[0])

    @property
    def source(self) -> Source:
        """Where its predictions come from."""
        if self is BenchStrategy.VANILLA:
            return Source.NONE
        if self is BenchStrategy.FCR_PERCEPTION:
            return Source.PERCEPTION
        if self is BenchStrategy.FCR_ORACLE:
            return Source.ORACLE
        return Source.PREDICTOR


ALL_STRATEGIES = tuple(BenchStrategy)


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
    """Rows to run, in this order: vanilla, seqsch, vbs, fcr, fcr-perception, fcr-oracle (vanilla always runs
    first: it is the base)."""
    repeats: int = 1
    """Rounds over all strategies; each round rotates their order. The table shows each strategy's median round."""
    vanilla_batch_size: int = 16
    """The paper's vanilla batch size (seqsch uses it too, so that row shows what sorting alone does)."""
    tune_data: str | None = None
    """A length dataset held out from the predictor's training: margin, bin width and VBS are chosen by
    simulation on the predictor's errors there, with a step cost measured on this engine first."""
    tune_split: str | None = None
    tune_start: int = 0
    tune_limit: int | None = None
    tune_lengths: str | None = None
    """Instead of tune_data, without the datasets library: held-out true lengths, JSONL {id, true} (the predictor
    predicts those ids: an oracle:FILE predictor must cover them; a registered one needs a `prompt` per line)."""
    tune_per_run: bool = True
    """Simulate the held-out requests in runs of as many requests as the bench serves (a small run's bins are
    partly filled); false: all held-out requests as one run."""
    paper_rows: tuple[BenchStrategy, ...] = ()
    """With tuning, these rows (of vbs, fcr, fcr-perception, fcr-oracle) also run under the starting (paper's)
    policy, as ROW@paper, each right after its tuned twin."""
    cost_batch_sizes: tuple[int, ...] = (1, 4, 16, 32, 64)
    """Batch sizes the step cost is measured at (for tuning and budget sizing)."""
    cost_prompt_lengths: tuple[int, ...] = (32, 160)
    """Prompt lengths the step cost is measured at."""
    budget_s: float | None = None
    """Replay only: serve the most prompts (a prefix of the selection) whose rows the simulator, with the
    measured step cost and the replayed lengths, predicts to finish within this many seconds of the bench's start."""
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    torch_threads: int | None = None
    """CPU threads for torch (default: torch's choice)."""
    out: str = "outputs/bench/bench"
    """Writes OUT.json, OUT.md and OUT.png (rewritten after every run, so a cut-short bench keeps its rows)."""
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        tuned = self.tune_data is not None or self.tune_lengths is not None
        require(not (self.tune_data and self.tune_lengths), "tune_lengths", "give tune_data or tune_lengths, not both")
        require(not self.paper_rows or tuned, "paper_rows", "needs tuning (tune_data or tune_lengths) to compare with")
        unscheduled = [row.value for row in self.paper_rows if not _uses_policy(row)]
        require(not unscheduled, "paper_rows", f"{unscheduled} do not use the policy's bins and VBS")
        missing = [row.value for row in self.paper_rows if row not in self.strategies]
        require(not missing, "paper_rows", f"{missing} must be among --strategies too")
        require(self.budget_s is None or self.budget_s > 0, "budget_s", f"must be > 0, got {self.budget_s}")
        points = len(self.cost_batch_sizes) * len(self.cost_prompt_lengths)
        require(points >= 3, "cost_batch_sizes", "x cost_prompt_lengths must give at least 3 points to fit")


def _uses_policy(strategy: BenchStrategy) -> bool:
    return strategy.strategy in (Strategy.VBS, Strategy.FCR)


@dataclass(frozen=True)
class BenchRow:
    """A row of the table: a strategy, under the tuned policy or (paper) the starting one."""

    strategy: BenchStrategy
    paper: bool = False

    @property
    def name(self) -> str:
        """The row's name in tables: the strategy, with `@paper` for the starting policy's twin."""
        return self.strategy.value + ("@paper" if self.paper else "")


def bench_rows(config: BenchConfig) -> list[BenchRow]:
    """The rows in run order: vanilla, then each strategy followed by its @paper twin when asked for."""
    rows = [BenchRow(BenchStrategy.VANILLA)]
    for strategy in config.strategies:
        if strategy is BenchStrategy.VANILLA:
            continue
        rows.append(BenchRow(strategy))
        if strategy in config.paper_rows:
            rows.append(BenchRow(strategy, paper=True))
    return rows


@dataclass
class StrategyRun:
    """One strategy's run in one round."""

    strategy: BenchStrategy
    round: int
    result: RunResult
    predicted: list[int] | None
    same_as_vanilla: int
    paper: bool = False
    """Run under the starting (paper's) policy while the other scheduled rows run the tuned one."""

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
    requests: list[Request] = field(default_factory=list)
    """The requests served (fewer than given when a budget sized the run)."""
    paper_policy: ScheduleConfig | None = None
    """The starting policy of the @paper rows (None: no such rows)."""
    setup: dict[str, Any] = field(default_factory=dict)
    """The measured step cost and the budget sizing, when there were any."""

    def row(self, strategy: BenchStrategy | str) -> dict[str, Any]:
        """The summary row of a strategy (or of a row name such as fcr@paper)."""
        name = strategy.value if isinstance(strategy, BenchStrategy) else strategy
        return next(row for row in self.rows if row["strategy"] == name)


RowItem = TypeVar("RowItem", BenchStrategy, BenchRow)


def _strategy_of(item: BenchStrategy | BenchRow) -> BenchStrategy:
    return item.strategy if isinstance(item, BenchRow) else item


def round_order(items: Sequence[RowItem], index: int) -> list[RowItem]:
    """The order of round `index`: vanilla first in round 0 (the oracle needs its lengths), then everything
    rotated by one per round so no row always runs first or last."""
    vanilla = next((item for item in items if _strategy_of(item) is BenchStrategy.VANILLA), BenchStrategy.VANILLA)
    others = [item for item in items if _strategy_of(item) is not BenchStrategy.VANILLA]
    ordered = [vanilla, *others]
    if index == 0:
        return ordered  # type: ignore[return-value]
    shift = index % len(ordered)
    return ordered[shift:] + ordered[:shift]  # type: ignore[return-value]


def strategy_config(strategy: BenchStrategy, policy: ScheduleConfig, vanilla_batch_size: int) -> ScheduleConfig:
    """The schedule one row runs."""
    if strategy.strategy in (Strategy.VANILLA, Strategy.SEQSCH):
        return replace(policy, strategy=strategy.strategy, batch_size=vanilla_batch_size)
    return replace(policy, strategy=strategy.strategy)


def _same(result: RunResult, vanilla: RunResult, by_length: bool = False) -> int:
    """Requests whose output equals vanilla's: token for token, or (replay, where text is noise) in length."""
    if by_length:
        return sum(a.num_tokens == b.num_tokens for a, b in zip(result.records, vanilla.records, strict=True))
    return sum(a.token_ids == b.token_ids for a, b in zip(result.records, vanilla.records, strict=True))


def _row_name(item: BenchStrategy | BenchRow | str) -> str:
    if isinstance(item, str):
        return item
    return item.name if isinstance(item, BenchRow) else item.value


def summarize(
    runs: Sequence[StrategyRun], rows: Sequence[BenchStrategy | BenchRow | str]
) -> tuple[list[dict], list[dict]]:
    """One row per table row (its median round by samples/s) with speedup vs vanilla and share of the oracle
    (the oracle under the same policy: fcr-oracle@paper for @paper rows)."""
    chosen: dict[str, StrategyRun] = {}
    spread: dict[str, list[float]] = {}
    for name in (_row_name(item) for item in rows):
        mine = sorted((item for item in runs if item.name == name), key=lambda r: r.result.metrics.samples_per_s)
        if mine:
            chosen[name] = mine[(len(mine) - 1) // 2]
            spread[name] = [item.result.metrics.samples_per_s for item in mine]
    base = chosen["vanilla"].result.metrics.samples_per_s
    table_rows, time_rows = [], []
    for name, item in chosen.items():
        metrics = item.result.metrics
        oracle = chosen.get("fcr-oracle@paper" if item.paper else "fcr-oracle") or chosen.get("fcr-oracle")
        oracle_sps = oracle.result.metrics.samples_per_s if oracle else None
        values = spread[name]
        table_rows.append(
            {
                **metrics.row(),
                "strategy": name,
                "speedup": metrics.samples_per_s / base if base else float("nan"),
                "of_oracle": metrics.samples_per_s / oracle_sps if oracle_sps else float("nan"),
                "same_as_vanilla": f"{item.same_as_vanilla}/{metrics.requests}",
                "rounds": len(values),
                "samples_per_s_min": min(values),
                "samples_per_s_max": max(values),
                "samples_per_s_stdev": statistics.pstdev(values) if len(values) > 1 else 0.0,
            }
        )
        prompt_pad = sum(b.padded_prompt_tokens - b.prompt_tokens for b in item.result.batches)
        time_rows.append(
            {
                "strategy": name,
                "total_s": metrics.total_s,
                "predictor_s": metrics.predictor_s,
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


class _Predictions:
    """Predicted lengths per source, each prediction timed (it counts in the run's total time)."""

    def __init__(self, engine: Engine, config: BenchConfig, requests: Sequence[Request]) -> None:
        self.engine, self.config, self.requests = engine, config, requests
        self.oracle: list[int] | None = None
        self._predictor: RequestPredictor | None = None
        self._perception: RequestPredictor | None = None

    def predictor(self) -> RequestPredictor:
        if self._predictor is None:
            spec = parse_predictor(self.config.predictor)
            if spec.kind in (PredictorSource.NONE, PredictorSource.PERCEPTION):
                raise SeqschedError(
                    "seqsch, vbs and fcr rows need --predictor (models:/NAME@ALIAS, runs:/..., oracle:FILE); "
                    "fcr-perception and fcr-oracle rows need none. Drop them with --strategies [vanilla,...]"
                )
            loaded = resolve_predictor(spec, self.engine, self.config.tracking_uri)
            assert loaded is not None
            self._predictor = loaded
        return self._predictor

    def get(self, source: Source) -> tuple[list[int] | None, float]:
        if source is Source.NONE:
            return None, 0.0
        if source is Source.ORACLE:
            if self.oracle is None:
                raise RuntimeError("the oracle's lengths come from vanilla's run, which has not run yet")
            return list(self.oracle), 0.0
        if source is Source.PERCEPTION:
            if self._perception is None:
                self._perception = resolve_predictor("perception", self.engine)
            predictor = self._perception
        else:
            predictor = self.predictor()
        assert predictor is not None
        started = time.perf_counter()
        values = predictor.predict_requests(self.requests)
        return values, time.perf_counter() - started


@dataclass
class _Setup:
    """What the bench settled before the rows: the requests it serves, the policies, what it measured."""

    requests: list[Request]
    policy: ScheduleConfig
    paper_policy: ScheduleConfig
    tuning: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _prompt_tokens(engine: Engine, requests: Sequence[Request]) -> list[int]:
    return [len(engine.encode(request.chat())) for request in requests]


def _held_out(engine: Engine, config: BenchConfig, predictions: _Predictions) -> HeldOut | None:
    if config.tune_lengths:
        return held_out_from_lengths(predictions.predictor(), config.tune_lengths)
    if config.tune_data:
        return held_out_from_dataset(
            engine, predictions.predictor(), config.tune_data, config.tune_split, config.tune_start, config.tune_limit
        )
    return None


@dataclass
class _SizingInputs:
    """What the budget sizing simulates with: every offered request's true length, prediction and prompt tokens."""

    true: list[int]
    predicted: list[int] | None
    prompt_tokens: list[int]


def _sizing_inputs(
    engine: Engine, config: BenchConfig, requests: list[Request], rows: Sequence[BenchRow]
) -> _SizingInputs:
    true = engine.recorded_lengths(requests)  # type: ignore[attr-defined]
    predicted = None
    if any(row.strategy.source is Source.PREDICTOR for row in rows):  # perception rows are simulated as the oracle
        predicted = _Predictions(engine, config, requests).predictor().predict_requests(requests)
    return _SizingInputs(true, predicted, _prompt_tokens(engine, requests))


def _size(
    config: BenchConfig,
    requests: list[Request],
    rows: Sequence[BenchRow],
    inputs: _SizingInputs,
    policies: tuple[ScheduleConfig, ScheduleConfig],
    cost: StepCost,
    seconds_left: float,
) -> tuple[list[Request], dict[str, Any]]:
    """The prefix of the requests that fits the budget (replay: the engine knows every request's length)."""
    tuned, paper = policies
    plans = [
        RowPlan(
            row.name,
            strategy_config(row.strategy, paper if row.paper else tuned, config.vanilla_batch_size),
            oracle=row.strategy.source is not Source.PREDICTOR,
        )
        for row in rows
    ]
    count, info = fit_count(
        plans, inputs.predicted, inputs.true, inputs.prompt_tokens, cost, seconds_left, config.repeats
    )
    info["offered"] = len(requests)
    print(
        f"budget {config.budget_s:.0f} s: {count} of {len(requests)} prompts fit (simulated rows: "
        f"{info['simulated_row_s']})",
        flush=True,
    )
    return requests[:count], info


def _prepare(
    engine: Engine, requests: list[Request], config: BenchConfig, rows: Sequence[BenchRow], started: float
) -> _Setup:
    """Step cost, tuning and budget sizing, in the order each needs the other."""
    paper = starting_policy(config)
    setup = _Setup(requests, paper, paper)
    tuning = config.tune_data is not None or config.tune_lengths is not None
    if not tuning and config.budget_s is None:
        return setup
    if config.budget_s is not None and not hasattr(engine, "recorded_lengths"):
        raise SeqschedError("--budget_s sizes a replay (--engine.replay): other engines' lengths are unknown")
    measured = time.perf_counter()
    cost, cost_table = measure_cost(engine, config.cost_batch_sizes, config.cost_prompt_lengths)
    setup.info["step_cost"] = {"fit": asdict(cost), "samples": cost_table, "seconds": time.perf_counter() - measured}
    print(
        f"step cost measured in {time.perf_counter() - measured:.0f} s ({time.perf_counter() - started:.0f} s since "
        f"start): {cost.fixed_s * 1000:.1f} ms + {cost.per_row_s * 1000:.3f} ms/row + "
        f"{cost.per_context_s * 1e6:.3f} us/row/context token per step",
        flush=True,
    )
    predictions = _Predictions(engine, config, requests)
    held_out = _held_out(engine, config, predictions)
    prompt_tokens = round(statistics.mean(_prompt_tokens(engine, requests[:64])))

    def tune(count: int) -> None:
        assert held_out is not None
        setup.policy, setup.tuning = tune_on(
            held_out, paper, cost, prompt_tokens, count if config.tune_per_run else None
        )

    if config.budget_s is None:
        if held_out is not None:
            tune(len(requests))
    else:
        # First sized with every row under the paper's policy (tuning is predicted to speed the tuned rows up, so
        # this errs on the safe side), then tuned for runs of that size and sized again with the tuned policy
        # (more prompts fit), then tuned again for the final size; the tunings' time is reserved each time.
        once = tuning_estimate_s(held_out, paper, cost, prompt_tokens) if held_out is not None else 0.0
        inputs = _sizing_inputs(engine, config, requests, rows)

        def size(policies: tuple[ScheduleConfig, ScheduleConfig], reserve: float) -> None:
            seconds_left = config.budget_s - (time.perf_counter() - started) - reserve  # type: ignore[operator]
            setup.requests, setup.info["sizing"] = _size(config, requests, rows, inputs, policies, cost, seconds_left)
            setup.info["sizing"]["tuning_reserve_s"] = round(reserve, 1)

        size((paper, paper), 2 * once)
        if held_out is not None:
            first = len(setup.requests)
            tune(first)
            size((setup.policy, paper), once)
            setup.info["sizing"]["first_count"] = first
            if len(setup.requests) != first:
                tune(len(setup.requests))
    if setup.tuning:
        info = setup.tuning
        print(
            f"tuned in {info['tuning_s']:.0f} s on {info['records']} held-out requests: margin "
            f"+{info['margin_tokens']} tokens x{1 + info['margin_ratio']:.2f}, bins of "
            f"{info['bin_width']}, vbs {info['vbs']}, recompute batch {info['batch_size']} (simulated "
            f"{info['simulated_paper_policy_s']:.0f} s -> {info['simulated_after_vbs_s']:.0f} s)",
            flush=True,
        )
    return setup


def run_bench(
    engine: Engine,
    requests: Sequence[Request],
    config: BenchConfig,
    *,
    started: float | None = None,
    on_run: Callable[[BenchResult], None] | None = None,
) -> BenchResult:
    """Run every row `repeats` times, interleaved, and summarize.

    started: when the bench began (perf_counter; the budget counts from it); on_run: called with the result so
    far after every run (the bench rewrites its files, so a cut-short run keeps what finished)."""
    if not requests:
        raise SeqschedError("no prompts to benchmark")
    if config.repeats < 1:
        raise SeqschedError(f"--repeats must be >= 1, got {config.repeats}")
    started = time.perf_counter() if started is None else started
    rows = bench_rows(config)
    setup = _prepare(engine, list(requests), config, rows, started)
    requests = setup.requests
    predictions = _Predictions(engine, config, requests)
    by_length = not getattr(engine, "text_faithful", True)
    options = RunOptions(progress=config.progress)
    runs: list[StrategyRun] = []
    vanilla: RunResult | None = None
    paper_policy = setup.paper_policy if any(row.paper for row in rows) else None

    def result_so_far() -> BenchResult:
        table_rows, time_rows = summarize(runs, rows)
        return BenchResult(
            runs, table_rows, time_rows, setup.policy, setup.tuning, list(requests), paper_policy, setup.info
        )

    for index in range(config.repeats):
        for row in round_order(rows, index):
            predicted, predictor_s = predictions.get(row.strategy.source)
            policy = setup.paper_policy if row.paper else setup.policy
            cfg = strategy_config(row.strategy, policy, config.vanilla_batch_size)
            result = run(engine, requests, predicted, cfg, options, predictor_s=predictor_s)
            if vanilla is None:
                vanilla = result
                predictions.oracle = [record.num_tokens for record in result.records]
            same = _same(result, vanilla, by_length)
            runs.append(StrategyRun(row.strategy, index, result, predicted, same, row.paper))
            metrics = result.metrics
            print(
                f"round {index + 1}/{config.repeats} {row.name}: {metrics.samples_per_s:.3f} samples/s, "
                f"{metrics.total_s:.1f} s, outputs {'as long as' if by_length else 'equal to'} vanilla's "
                f"{same}/{metrics.requests}",
                flush=True,
            )
            if on_run is not None:
                on_run(result_so_far())
    return result_so_far()


def _replay_info(engine: Engine, config: BenchConfig) -> dict[str, Any] | None:
    if getattr(engine, "text_faithful", True):
        return None
    model = getattr(engine, "model", None)
    return {
        "note": REPLAY_NOTE,
        "random_init": config.model.random_init,
        "lengths": config.engine.replay or getattr(engine, "source", ""),
        "tokenizer": config.model.spec,
        "parameters": parameter_count(model) if model is not None else 0,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None else "",
    }


def bench(config: BenchConfig, engine: Engine | None = None) -> BenchResult:
    """`seqsched bench`: every strategy on the same prompts; writes OUT.json, OUT.md and OUT.png."""
    if not config.input:
        raise SeqschedError("--input is required (a prompts file; the recipe names the shared validation set)")
    started = time.perf_counter()
    set_torch_threads(config.torch_threads)
    read = read_requests(config.input, config.input_format)
    end = None if config.count is None else config.offset + config.count
    requests = read.requests[config.offset : end]
    print(f"{len(requests)} prompts from {config.input}; strategies: {', '.join(s.value for s in config.strategies)}")
    engine = engine or build_engine(config.engine, config.model, requests)
    replay = _replay_info(engine, config)
    import torch

    device = device_line()
    out = Path(config.out)
    command = command_line()
    extra = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": device,
        "torch_threads": torch.get_num_threads(),
        "model": config.model.spec,
        "engine": config.engine.kind.value,
        "replay": replay,
    }

    def write(result: BenchResult, final: bool) -> None:
        served = result.requests or requests
        extra.update(prompts=len(served), wall_s=time.perf_counter() - started, complete=final)
        write_json(out.with_suffix(".json"), report_dict(result, config, served, extra))
        model_text = f"random-weight {config.model.random_init} (replay)" if replay else config.model.spec
        header = "\n\n".join(
            [
                f"`{command}`",
                f"{extra['date']}, {device}, torch threads {extra['torch_threads']}; model {model_text} "
                f"({config.engine.kind.value} engine); {len(served)} prompts, limit {config.limit}, greedy; "
                f"{config.repeats} round(s), median shown; bench wall time {extra['wall_s']:.0f} s"
                + ("" if final else " (incomplete: rows still running)"),
                *describe_setup(result, replay),
            ]
        )
        write_text(out.with_suffix(".md"), markdown(result, header))

    result = run_bench(engine, requests, config, started=started, on_run=lambda partial: write(partial, False))
    write(result, True)
    title = f"{config.model.random_init} (replay, random weights)" if replay else config.model.spec
    png = plot(result, out.with_suffix(".png"), f"{title}, {len(result.requests)} prompts, {device}")
    print("\n" + out.with_suffix(".md").read_text())
    wrote = [str(out.with_suffix(".json")), str(out.with_suffix(".md")), *([str(png)] if png else [])]
    print(f"wrote {', '.join(wrote)}", file=sys.stderr)
    return result


def command_line() -> str:
    """The command that started this bench, as one would type it again."""
    if Path(sys.argv[0]).name == "recipe.py":
        return shlex.join(["python", "-m", "seqsched_cli.recipe", *sys.argv[1:]])
    return shlex.join(["seqsched", *sys.argv[1:]])
