"""`seqsched bench` on the tiny model: every strategy, interleaved rounds, outputs equal vanilla's, files written."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from seqsched.engines.config import EngineConfig
from seqsched.engines.hf import HFEngine
from seqsched.errors import SeqschedError
from seqsched.files import write_jsonl
from seqsched.requests import Request
from seqsched_cli.main import main
from serving.bench import (
    HF_STRATEGIES,
    BenchConfig,
    BenchStrategy,
    markdown,
    round_order,
    run_bench,
    select_by_label,
    strategy_config,
    summarize,
)
from serving.bench.setup import Predictions
from serving.measure.autotune import Tuner
from serving.measure.memory import KVBudget
from serving.policy.scheduler import Admission, ScheduleConfig, Strategy
from serving.policy.stepcost import StepCost
from serving.policy.workload import ErrorModel, Objective, TuneConfig
from serving.runner import run
from tests.tiny_model import synthetic_prompts

POLICY = {"limit": 40, "bin_width": 5, "batch_size": 6, "vbs": {5: 12, 10: 8, 15: 6, 20: 5}}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def requests() -> list[Request]:
    return [Request(id=f"r{index}", prompt=prompt) for index, prompt in enumerate(synthetic_prompts(16, seed=3))]


@pytest.fixture(scope="module")
def noisy_oracle(tmp_path_factory: pytest.TempPathFactory, tiny_engine: HFEngine, requests: list[Request]) -> Path:
    """A predictor file: the true greedy lengths off by up to +-8 tokens (so FCR fails and recomputes some)."""
    vanilla = run(tiny_engine, requests, None, ScheduleConfig(strategy=Strategy.VANILLA, **POLICY))
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("bench") / "noisy.jsonl"
    rows = [{"id": r.id, "true": max(0, r.num_tokens + rng.randint(-8, 8))} for r in vanilla.records]
    write_jsonl(path, rows)
    return path


def test_round_order_starts_with_vanilla_then_rotates() -> None:
    strategies = list(BenchStrategy)
    assert round_order(strategies, 0)[0] is BenchStrategy.VANILLA
    firsts = {round_order(strategies, index)[0] for index in range(len(strategies))}
    assert firsts == set(strategies), "over a full cycle every strategy runs first once"
    assert all(sorted(round_order(strategies, i), key=strategies.index) == strategies for i in range(8))


def test_every_strategy_equals_vanilla(tiny_engine: HFEngine, requests: list[Request], noisy_oracle: Path) -> None:
    config = BenchConfig(predictor=f"oracle:{noisy_oracle}", repeats=2, vanilla_batch_size=6, progress=False, **POLICY)
    # vLLM's rows by default only where auto means vLLM (tests: hf); the tuned rows only when asked (--tune.data).
    defaults = tuple(strategy for strategy in HF_STRATEGIES if not strategy.tuned)
    assert config.strategies == defaults
    result = run_bench(tiny_engine, requests, config)
    assert len(result.runs) == 2 * len(defaults)
    assert [row["strategy"] for row in result.rows] == [s.value for s in defaults]
    for item in result.runs:
        assert item.same_as_vanilla == len(requests), f"{item.strategy.value} round {item.round}"
    fcr = result.row(BenchStrategy.FCR)
    oracle = result.row(BenchStrategy.FCR_ORACLE)
    vanilla = result.row(BenchStrategy.VANILLA)
    assert vanilla["speedup"] == pytest.approx(1.0)
    assert oracle["of_oracle"] == pytest.approx(1.0)
    assert fcr["failed"] > 0, "noisy predictions cut some requests short"
    assert oracle["failed"] == 0, "the oracle's lengths are exact"
    assert oracle["effective_token_ratio"] > vanilla["effective_token_ratio"]
    # The table is built from the median round of each strategy.
    again, _ = summarize(result.runs, list(defaults))
    assert again == result.rows
    # wasted_share is everything but the output tokens: padding, finished rows and FCR's thrown-away attempts.
    times = {row["strategy"]: row for row in result.time_rows}
    assert "padding_share" not in times["fcr"]
    assert times["fcr"]["wasted_share"] == pytest.approx(1 - fcr["effective_token_ratio"])
    assert fcr["recompute_share"] > 0 and times["fcr"]["wasted_share"] > 0


def pool_config(oracle: Path, strategies: tuple[BenchStrategy, ...], **extra: Any) -> BenchConfig:
    """A bench of these rows with the oracle file as predictor and a pool of 3 slots."""
    return BenchConfig(
        predictor=f"oracle:{oracle}",
        strategies=strategies,
        engine=EngineConfig(slots=3),
        vanilla_batch_size=6,
        progress=False,
        **extra,
        **POLICY,
    )


def test_continuous_rows_share_the_model_and_equal_vanilla(
    tiny_engine: HFEngine, requests: list[Request], noisy_oracle: Path
) -> None:
    strategies = (BenchStrategy.VANILLA, BenchStrategy.FCR, *(s for s in BenchStrategy if s.pool and not s.tuned))
    config = pool_config(noisy_oracle, strategies)
    result = run_bench(tiny_engine, requests, config)
    assert result.slots == {"slots": 3, "rule": "--engine.slots"}
    for item in result.runs:
        assert item.same_as_vanilla == len(requests), item.strategy.value
        expected = item.strategy.admission.value if item.strategy.continuous else "-"
        assert item.result.metrics.admission == expected
    assert [row["strategy"] for row in result.continuous_rows] == ["cb-fcfs", "cb-sjf", "cb-sjf-oracle", "cb-sjf-fcr"]
    for row in result.continuous_rows:
        assert row["slots"] == 3 and 1 <= row["mean_rows"] <= 3 and row["prefills"] >= len(requests) / 3
    cb_fcfs = result.row(BenchStrategy.CB_FCFS)
    assert cb_fcfs["speed_vs_cb_fcfs"] == pytest.approx(1.0) and cb_fcfs["latency_vs_cb_fcfs"] == pytest.approx(1.0)
    assert result.row(BenchStrategy.CB_SJF_FCR)["failed"] > 0, "noisy predictions cut some requests short"
    assert result.row(BenchStrategy.CB_SJF_ORACLE)["failed"] == 0
    # Continuous rows decode no finished rows: row-steps are each request's own steps.
    vanilla = next(item for item in result.runs if item.strategy is BenchStrategy.VANILLA).result
    own_steps = sum(r.num_tokens + (r.finish_reason.value == "stop") for r in vanilla.records)
    assert result.row(BenchStrategy.CB_FCFS)["row_steps"] == own_steps
    text = markdown(result, "tiny")
    assert (
        "Continuous batching (our pool: 3 slots" in text and "| cb-sjf-oracle" in text and "latency_vs_cb_fcfs" in text
    )


def test_vllm_rows_run_on_the_vllm_engine_after_ours(
    tiny_engine: HFEngine, requests: list[Request], noisy_oracle: Path
) -> None:
    """vllm-* rows run on the engine the factory builds (the fake vLLM here), after our rows; vllm-fcfs is added as
    their base; the oracle row takes vLLM's own lengths; outputs are compared with vllm-fcfs's and with vanilla's."""
    from seqsched.engines.vllm import VLLMEngine
    from tests.fake_vllm import LLM, fake_vllm_module

    started: list[VLLMEngine] = []

    def start() -> VLLMEngine:
        engine = VLLMEngine(LLM(tiny_engine, max_num_seqs=4), tiny_engine.tokenizer, fake_vllm_module())
        started.append(engine)
        return engine

    strategies = (BenchStrategy.VANILLA, BenchStrategy.VLLM_SJF_ORACLE, BenchStrategy.VLLM_SJF, BenchStrategy.VLLM_FCR)
    config = BenchConfig(
        predictor=f"oracle:{noisy_oracle}", strategies=strategies, vanilla_batch_size=6, progress=False, **POLICY
    )
    result = run_bench(tiny_engine, requests, config, vllm=start)
    assert len(started) == 1
    names = [item.name for item in result.runs]
    assert names == ["vanilla", "vllm-fcfs", "vllm-sjf-oracle", "vllm-sjf", "vllm-fcr"]
    base = next(item for item in result.runs if item.strategy is BenchStrategy.VLLM_FCFS)
    oracle = next(item for item in result.runs if item.strategy is BenchStrategy.VLLM_SJF_ORACLE)
    assert oracle.predicted == [record.num_tokens for record in base.result.records]
    for item in result.runs[1:]:
        assert item.same_as_base == len(requests), item.name
        assert item.result.metrics.admission == item.strategy.admission.value
    fcr = result.row(BenchStrategy.VLLM_FCR)
    assert fcr["failed"] > 0 and fcr["same_as_vllm_fcfs"] == f"{len(requests)}/{len(requests)}"
    assert result.row(BenchStrategy.VLLM_FCFS)["speed_vs_vllm_fcfs"] == pytest.approx(1.0)
    assert [row["slots"] for row in result.continuous_rows] == [4, 4, 4, 4]
    assert "speed_vs_vllm_fcfs" in markdown(result, "tiny")
    with pytest.raises(SeqschedError, match="vLLM engine"):
        run_bench(tiny_engine, requests, config)


def test_vllm_rows_serve_fcfs_without_predicting_when_every_request_fits_at_once(
    tiny_engine: HFEngine, requests: list[Request], noisy_oracle: Path
) -> None:
    """With room for all 16 requests at once (16 sequences, KV for each prompt and its whole limit), no order can
    change the run: vllm-sjf and vllm-fcr serve FCFS and never call the predictor (its file is gone: a call would
    fail); vllm-sjf-oracle still orders (the ceiling). With one block too few, vllm-sjf orders by the predictor."""
    from seqsched.engines.vllm import VLLMEngine
    from serving.measure.autotune import own_limits, prompt_lengths
    from tests.fake_vllm import LLM, fake_vllm_module

    needed = sum(
        -(-(p + b) // 16) * 16
        for p, b in zip(prompt_lengths(tiny_engine, requests), own_limits(requests, 40), strict=True)
    )
    oracle_file = noisy_oracle.parent / "all-fit.jsonl"
    oracle_file.write_text(noisy_oracle.read_text())
    strategies = (BenchStrategy.VANILLA, BenchStrategy.VLLM_SJF_ORACLE, BenchStrategy.VLLM_SJF, BenchStrategy.VLLM_FCR)
    config = BenchConfig(
        predictor=f"oracle:{oracle_file}", strategies=strategies, vanilla_batch_size=6, progress=False, **POLICY
    )

    def start(kv_tokens: int) -> VLLMEngine:
        llm = LLM(tiny_engine, max_num_seqs=len(requests), kv_cache_tokens=kv_tokens)
        return VLLMEngine(llm, tiny_engine.tokenizer, fake_vllm_module())

    predictions = Predictions(tiny_engine, config, requests)
    oracle_file.unlink()  # a prediction would fail now
    roomy = run_bench(tiny_engine, requests, config, predictions=predictions, vllm=lambda: start(needed + 16))
    by_name = {item.name: item for item in roomy.runs}
    for name in ("vllm-sjf", "vllm-fcr"):
        item = by_name[name]
        assert item.fallback is not None and f"all {len(requests)} requests run at once" in item.fallback, name
        assert item.predicted is None and item.result.metrics.admission == "fcfs", name
        assert item.result.metrics.predictor_s == 0.0 and roomy.row(name)["schedule"] == "fcfs (all fit at once)"
        assert item.same_as_base == len(requests)
    assert by_name["vllm-sjf-oracle"].fallback is None and by_name["vllm-sjf-oracle"].predicted is not None
    assert "Served FCFS without predicting" in markdown(roomy, "tiny")

    oracle_file.write_text(noisy_oracle.read_text())
    tight = BenchConfig(
        predictor=f"oracle:{oracle_file}",
        strategies=(BenchStrategy.VANILLA, BenchStrategy.VLLM_SJF),
        vanilla_batch_size=6,
        progress=False,
        **POLICY,
    )
    item = next(
        run
        for run in run_bench(tiny_engine, requests, tight, vllm=lambda: start(needed)).runs
        if run.strategy is BenchStrategy.VLLM_SJF
    )
    assert item.fallback is None and item.predicted is not None and item.result.metrics.admission == "sjf"


def test_rows_map_to_strategies_and_policies() -> None:
    assert BenchStrategy.CB_FCFS.strategy is Strategy.VANILLA and BenchStrategy.CB_FCFS.admission is Admission.FCFS
    oracle = BenchStrategy.CB_SJF_ORACLE
    assert oracle.admission is Admission.SJF and oracle.source.value == "oracle"
    assert BenchStrategy.CB_SJF_FCR.strategy is Strategy.FCR and BenchStrategy.FCR.admission is Admission.AUTO
    policy = ScheduleConfig(policy=Admission.SJF, margin_tokens=3)
    assert strategy_config(BenchStrategy.FCR, policy, 16).policy is Admission.AUTO, "static rows ignore policies"
    cb = strategy_config(BenchStrategy.CB_SJF_FCR, policy, 16)
    assert cb.policy is Admission.SJF_FCR and cb.margin_tokens == 3


def test_bench_command_writes_json_markdown_png(tiny_model_dir: Path, noisy_oracle: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": f"p{i}", "prompt": p} for i, p in enumerate(synthetic_prompts(10, seed=3))])
    oracle = tmp_path / "oracle.jsonl"
    write_jsonl(oracle, [{"id": f"p{i}", "true": 5 + i} for i in range(10)])
    out = tmp_path / "bench" / "tiny"
    code = main(
        [
            "bench",
            "--cost.batches=[1,2,4]",
            "--cost.contexts=2",
            f"--cost.cache_dir={tmp_path / 'cost'}",
            f"--input={prompts}",
            f"--predictor=oracle:{oracle}",
            f"--model.spec={tiny_model_dir}",
            "--strategies=[vanilla,fcr,fcr-oracle,cb-fcfs,cb-sjf-oracle]",
            "--engine.slots=4",
            "--limit=40",
            "--bin_width=5",
            "--vanilla_batch_size=4",
            "--torch_threads=1",
            "--progress=false",
            f"--out={out}",
        ]
    )
    assert code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    names = ["vanilla", "fcr", "fcr-oracle", "cb-fcfs", "cb-sjf-oracle"]
    assert [row["strategy"] for row in report["table"]] == names
    assert all(row["same_as_vanilla"] == "10/10" for row in report["table"])
    assert all(row["time_to_half_s"] <= row["latency_p99_s"] for row in report["table"])
    assert report["slots"]["slots"] == 4 and len(report["continuous"]) == 2
    assert set(report["completion_s"]) == set(names) and len(report["completion_s"]["cb-fcfs"]) == 10
    assert len(report["vanilla_lengths"]) == 10 and report["ids"][0] == "p0"
    assert "| fcr-oracle" in out.with_suffix(".md").read_text()
    assert [row["strategy"] for row in report["simulated"]] == names  # the continuous rows too
    assert "Simulated vs measured" in out.with_suffix(".md").read_text()
    assert report["tuning"]["step_cost"]["model"] in ("grid", "linear") and list((tmp_path / "cost").glob("*.json"))
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_scheduled_rows_need_a_predictor(tiny_engine: HFEngine, requests: list[Request]) -> None:
    from seqsched.errors import SeqschedError

    config = BenchConfig(strategies=(BenchStrategy.VANILLA, BenchStrategy.FCR), progress=False, **POLICY)
    with pytest.raises(SeqschedError, match="need --predictor"):
        run_bench(tiny_engine, requests[:4], config)
    with pytest.raises(SeqschedError, match="drop --policy"):
        run_bench(tiny_engine, requests[:4], BenchConfig(policy=Admission.SJF, progress=False, **POLICY))


def tuner(min_gain: float = 0.05) -> Tuner:
    """A tuner with a fixed cost (no measurement) and a predictor that is off by up to +-8 tokens."""
    predicted = list(range(0, 40, 2))
    errors = ErrorModel.fit(predicted, [max(0, value + 8 * (-1) ** value) for value in predicted], bin_width=5)
    cost = StepCost(fixed_s=0.05, per_row_s=0.002, per_context_s=1e-5)
    return Tuner(cost, KVBudget(None, "test"), TuneConfig(draws=2, min_gain=min_gain), errors)


def test_tuned_rows_report_their_decision_and_simulated_time(
    tiny_engine: HFEngine, requests: list[Request], noisy_oracle: Path
) -> None:
    config = BenchConfig(
        predictor=f"oracle:{noisy_oracle}", vanilla_batch_size=6, progress=False, tune=TuneConfig(data="x"), **POLICY
    )
    result = run_bench(tiny_engine, requests, config, tuner())
    assert set(result.tuning["decisions"]) == {"fcr", "fcr-oracle"}
    fcr = result.row(BenchStrategy.FCR)
    assert fcr["schedule"] in ("tuned", "vanilla (fallback)") and result.row(BenchStrategy.VANILLA)["schedule"] == ""
    for item in result.runs:
        assert item.same_as_vanilla == len(requests), item.strategy.value
    simulated = {row["strategy"]: row for row in result.sim_rows}
    assert set(simulated) == {item.strategy.value for item in result.runs}
    assert any(item.strategy.continuous for item in result.runs)
    for name, row in simulated.items():
        # The simulators replay the engine's static batches and the continuous pool's admissions step for step:
        # only the seconds are modelled.
        assert row["simulated_row_steps"] == row["measured_row_steps"], name
        assert row["simulated_s"] > 0 and row["error"] == pytest.approx(row["simulated_s"] / row["measured_s"] - 1)


def test_tuned_continuous_rows_serve_the_simulated_choice_or_fcfs(
    tiny_engine: HFEngine, requests: list[Request], noisy_oracle: Path, tmp_path: Path
) -> None:
    """cb-tuned and vllm-tuned choose their order by simulation on the predictions and the held-out errors (our
    pool: the tuner's step cost; vLLM: its own, here from a file), serve it, and report it; with a gain nobody can
    reach they serve FCFS. Outputs stay equal to the engine's base run either way; the rows need --tune.data."""
    from seqsched.engines.vllm import VLLMEngine
    from serving.measure.costmodel import CostConfig
    from tests.fake_vllm import LLM, fake_vllm_module

    cost_file = tmp_path / "vllm-cost.json"
    cost_file.write_text(json.dumps({"fixed_s": 0.05, "per_row_s": 0.002, "per_context_s": 1e-5}))
    strategies = (BenchStrategy.VANILLA, BenchStrategy.CB_FCFS, BenchStrategy.CB_TUNED, BenchStrategy.VLLM_TUNED)
    tune = TuneConfig(data="x", objective=Objective.LATENCY)
    config = pool_config(noisy_oracle, strategies, tune=tune, cost=CostConfig(file=str(cost_file)))

    def start() -> VLLMEngine:
        llm = LLM(tiny_engine, max_num_seqs=3, kv_cache_tokens=4096)
        return VLLMEngine(llm, tiny_engine.tokenizer, fake_vllm_module())

    by_latency = replace(tuner(), tune=TuneConfig(draws=2, min_gain=0.05, objective=Objective.LATENCY))
    result = run_bench(tiny_engine, requests, config, by_latency, vllm=start)
    decisions = result.tuning["kv_decisions"]
    assert set(decisions) == {"cb-tuned", "vllm-tuned"}
    assert result.tuning["vllm_step_cost"]["source"] == str(cost_file)
    for name in ("cb-tuned", "vllm-tuned"):
        item = next(run for run in result.runs if run.name == name)
        decision = item.kv_decision
        assert decision is not None and decisions[name]["objective"] == "latency"
        # Neither engine here admits by KV reservations (no KV budget, vLLM's own scheduler): the order only.
        assert {row["policy"].split("-")[0] for row in decisions[name]["candidates"]} == {"greedy"}
        # 16 requests through 3 slots queue: shortest-predicted-first is predicted to cut the mean latency.
        assert not decision.fallback and decision.policy.order is Admission.SJF, decision.describe()
        assert item.result.metrics.admission == "sjf" and result.row(name)["schedule"] == "greedy-sjf"
        assert item.same_as_vanilla == len(requests) and item.predicted is not None
    unreachable = replace(by_latency, tune=replace(by_latency.tune, min_gain=100.0))
    fcfs = run_bench(tiny_engine, requests, replace(config, strategies=strategies[:3]), unreachable)
    item = next(run for run in fcfs.runs if run.name == "cb-tuned")
    assert item.kv_decision is not None and item.kv_decision.fallback
    assert item.result.metrics.admission == "fcfs" and fcfs.row("cb-tuned")["schedule"] == "fcfs (no gain predicted)"
    assert "- cb-tuned: fcfs (no gain of 10000% predicted), by latency" in markdown(fcfs, "tiny")
    with pytest.raises(SeqschedError, match=r"strategies.*--tune.data"):
        BenchConfig(predictor=f"oracle:{noisy_oracle}", strategies=strategies[:3], **POLICY)


def test_a_schedule_that_does_not_win_serves_vanilla_batches(
    tiny_engine: HFEngine, requests: list[Request], noisy_oracle: Path
) -> None:
    config = BenchConfig(
        predictor=f"oracle:{noisy_oracle}",
        strategies=(BenchStrategy.VANILLA, BenchStrategy.FCR),
        vanilla_batch_size=6,
        progress=False,
        tune=TuneConfig(data="x"),
        **POLICY,
    )
    result = run_bench(tiny_engine, requests, config, tuner(min_gain=100.0))  # nothing wins by 100x
    fcr_run = next(item for item in result.runs if item.strategy is BenchStrategy.FCR)
    assert fcr_run.decision is not None and fcr_run.decision.fallback
    assert fcr_run.result.config.strategy is Strategy.VANILLA and fcr_run.result.metrics.failed == 0
    vanilla_run = next(item for item in result.runs if item.strategy is BenchStrategy.VANILLA)
    assert [b.request_ids for b in fcr_run.result.batches] == [b.request_ids for b in vanilla_run.result.batches]
    assert result.row(BenchStrategy.FCR)["schedule"] == "vanilla (fallback)"
    assert fcr_run.result.metrics.tuning_s > 0


def test_select_by_label_keeps_long_answers(tmp_path: Path) -> None:
    lengths = tmp_path / "lengths.json"
    lengths.write_text(
        json.dumps(
            [
                {"id": "a", "L_gt": 5, "L_t0.0": 120, "L_t0.3": 260, "L_t0.5": 10, "L_t0.7": 3},
                {"id": "b", "L_gt": 5, "L_t0.0": 199, "L_t0.3": 201, "L_t0.5": 10, "L_t0.7": 3},
                {"id": "c", "L_gt": 5, "L_t0.0": 9, "L_t0.3": 2, "L_t0.5": 10, "L_t0.7": 3},
            ]
        )
    )
    chosen = select_by_label([Request(id=key, prompt="p") for key in "abc"], str(lengths), 250)
    assert [request.id for request in chosen] == ["a", "b"], "labels 300 and 250 (201 rounded up), not 50"
    from seqsched.errors import SeqschedError

    with pytest.raises(SeqschedError, match="no lengths for 1 prompt ids"):
        select_by_label([Request(id="z", prompt="p")], str(lengths), 250)


def test_the_fcr_row_serves_the_quantile_the_tuner_chose(
    tiny_engine: HFEngine, requests: list[Request], noisy_oracle: Path
) -> None:
    from serving.bench.setup import Predictions
    from serving.predictors import read_oracle

    oracle = read_oracle(noisy_oracle)

    class Quantiles:  # a predictor with a length distribution: each quantile adds to the oracle's guess
        quantiles_supported = True

        def predict_requests(self, batch: list[Request]) -> list[int]:
            return oracle.predict_requests(batch)

        def predict_quantiles(self, batch: list[Request], quantiles: tuple[float, ...]) -> dict[float, list[int]]:
            base = oracle.predict_requests(batch)
            return {q: [value + round(20 * (q - 0.5)) for value in base] for q in quantiles}

    config = BenchConfig(
        predictor=f"oracle:{noisy_oracle}",
        strategies=(BenchStrategy.VANILLA, BenchStrategy.FCR),
        vanilla_batch_size=6,
        progress=False,
        tune=TuneConfig(data="x", quantiles=(0.5, 0.9)),
        **POLICY,
    )
    with_quantiles = tuner()
    with_quantiles.errors_by_quantile = {0.5: with_quantiles.errors, 0.9: with_quantiles.errors}  # type: ignore[dict-item]
    predictions = Predictions(tiny_engine, config, requests)
    predictions._predictor = Quantiles()  # type: ignore[assignment]
    result = run_bench(tiny_engine, requests, config, with_quantiles, predictions)
    fcr = next(item for item in result.runs if item.strategy is BenchStrategy.FCR)
    assert fcr.decision is not None and fcr.decision.details["quantile"] in (0.5, 0.9)
    chosen = fcr.decision.details["quantile"]
    assert fcr.predicted == Quantiles().predict_quantiles(requests, (chosen,))[chosen]
    assert set(result.tuning["decisions"]["fcr"]["quantiles"]) == {"0.5", "0.9"}
    assert fcr.same_as_vanilla == len(requests)
