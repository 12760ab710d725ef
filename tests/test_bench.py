"""`seqsched bench` on the tiny model: every strategy, interleaved rounds, outputs equal vanilla's, files written."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqsched.engines.hf import HFEngine
from seqsched.files import write_jsonl
from seqsched.requests import Request
from seqsched_cli.main import main
from serving.bench import BenchConfig, BenchStrategy, round_order, run_bench, summarize
from serving.runner import run
from serving.scheduler import ScheduleConfig, Strategy
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
    result = run_bench(tiny_engine, requests, config)
    assert len(result.runs) == 2 * len(BenchStrategy)
    assert [row["strategy"] for row in result.rows] == [s.value for s in BenchStrategy]
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
    again, _ = summarize(result.runs, list(BenchStrategy))
    assert again == result.rows
    # wasted_share is everything but the output tokens: padding, finished rows and FCR's thrown-away attempts.
    times = {row["strategy"]: row for row in result.time_rows}
    assert "padding_share" not in times["fcr"]
    assert times["fcr"]["wasted_share"] == pytest.approx(1 - fcr["effective_token_ratio"])
    assert fcr["recompute_share"] > 0 and times["fcr"]["wasted_share"] > 0


def test_bench_command_writes_json_markdown_png(tiny_model_dir: Path, noisy_oracle: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": f"p{i}", "prompt": p} for i, p in enumerate(synthetic_prompts(10, seed=3))])
    oracle = tmp_path / "oracle.jsonl"
    write_jsonl(oracle, [{"id": f"p{i}", "true": 5 + i} for i in range(10)])
    out = tmp_path / "bench" / "tiny"
    code = main(
        [
            "bench",
            f"--input={prompts}",
            f"--predictor=oracle:{oracle}",
            f"--model.spec={tiny_model_dir}",
            "--strategies=[vanilla,fcr,fcr-oracle]",
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
    assert [row["strategy"] for row in report["table"]] == ["vanilla", "fcr", "fcr-oracle"]
    assert all(row["same_as_vanilla"] == "10/10" for row in report["table"])
    assert len(report["vanilla_lengths"]) == 10 and report["ids"][0] == "p0"
    assert "| fcr-oracle" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_scheduled_rows_need_a_predictor(tiny_engine: HFEngine, requests: list[Request]) -> None:
    from seqsched.errors import SeqschedError

    config = BenchConfig(strategies=(BenchStrategy.VANILLA, BenchStrategy.FCR), progress=False, **POLICY)
    with pytest.raises(SeqschedError, match="need --predictor"):
        run_bench(tiny_engine, requests[:4], config)
