"""`seqsched bench` and the pipeline demo with the real SmolLM2 (marker: integration)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from seqsched.files import write_jsonl
from seqsched_cli.main import main
from serving.demo import builtin_instructions, spread_sample

pytestmark = pytest.mark.integration


def test_bench_outputs_equal_across_strategies(tmp_path: Path) -> None:
    requests = spread_sample(builtin_instructions(), 8)
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": r.id, "prompt": r.prompt} for r in requests])
    # A crude predictor: 12 tokens for everything, so FCR caps most requests and recomputes them.
    guesses = tmp_path / "guesses.jsonl"
    write_jsonl(guesses, [{"id": r.id, "true": 12} for r in requests])
    out = tmp_path / "bench"
    argv = ["bench", f"--input={prompts}", f"--predictor=oracle:{guesses}", "--limit=40", "--bin_width=10"]
    argv += ["--vanilla_batch_size=4", "--batch_size=4", "--vbs={10: 8, 20: 8}", "--torch_threads=1"]
    argv += ["--engine.slots=3", "--progress=false", f"--out={out}", f"--cost.cache_dir={tmp_path / 'cost'}"]
    argv += ["--cost.batches=[1,4,8]"]
    assert main(argv) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    names = [row["strategy"] for row in report["table"]]
    static = ["vanilla", "seqsch", "vbs", "fcr", "fcr-perception", "fcr-oracle"]
    assert names == [*static, "cb-fcfs", "cb-sjf", "cb-sjf-oracle", "cb-sjf-fcr"]
    for row in report["table"]:
        assert row["same_as_vanilla"] == "8/8", row["strategy"]
    fcr = next(row for row in report["table"] if row["strategy"] == "fcr")
    oracle = next(row for row in report["table"] if row["strategy"] == "fcr-oracle")
    assert fcr["failed"] > 0 and oracle["failed"] == 0
    assert len(set(report["vanilla_lengths"])) > 2, "the built-in instructions give varied lengths"
    simulated = {row["strategy"]: row for row in report["simulated"]}
    assert set(simulated) == set(names) and all(row["simulated_s"] > 0 for row in simulated.values())
    for name, row in simulated.items():  # static batches and the pool's admissions, FCR recomputes included
        assert row["simulated_row_steps"] == row["measured_row_steps"], f"{name}: the simulator replays the run"


def test_pipeline_demo_labels_trains_registers_and_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shared_data: Path
) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--prompts=10", "--max_new_tokens=24", "--label_count=4", "--train_limit=80"]
    argv += ["--held_out_limit=40", "--torch_threads=1", f"--shared_data={shared_data}"]
    if importlib.util.find_spec("vllm") is not None:
        argv.append("--engine=vllm")  # the served prompts on vLLM too: as users run it, by the predictor, by the oracle
    assert main([*argv, f"--out_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "registered models:/seqsched-demo/1 (@champion)" in printed
    assert "held-out errors: 40 records" in printed and "the oracle" in printed
    comparison = json.loads((out / "comparison.json").read_text())
    assert [row["run"] for row in comparison["runs"]] == ["vanilla", "fcr (models:/seqsched-demo@champion)"]
    assert comparison["same_outputs"] == 10 and comparison["oracle_simulated_speedup"] > 0
    assert comparison["served"]["offset"] == 1256 and len(comparison["served"]["ids"]) == 10
    lines = (out / "scheduled.jsonl").read_text().splitlines()
    assert [json.loads(line)["custom_id"] for line in lines] == [
        json.loads(line)["custom_id"] for line in (out / "requests.jsonl").read_text().splitlines()
    ]
    assert (out / "mlflow.db").is_file() and (out / "lengths-train" / "meta.json").is_file()
    trained = len((out / "lengths-train" / "train.jsonl").read_text().splitlines())
    assert trained == 80 + 4, "the committed lengths plus the four the demo labelled"
    if comparison["vllm"] is not None:
        names = [row["run"] for row in comparison["vllm"]["runs"]]
        assert names == ["vllm", "vllm + predictor (sjf)", "vllm + oracle (sjf)"]
        assert all(row["requests"] == 10 for row in comparison["vllm"]["runs"])
        # 10 requests fit vLLM at once: the predictor's run serves FCFS without predicting; the oracle's orders.
        admissions = [row["admission"] for row in comparison["vllm"]["runs"]]
        assert admissions == ["fcfs", "fcfs", "sjf"] and comparison["vllm"]["runs"][1]["predictor_s"] == 0.0
        assert "every request fit at once, so seqsched served FCFS without predicting" in printed
