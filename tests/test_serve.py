"""`seqsched serve` end to end on the tiny model: OpenAI Batch in/out, oracle predictor, metrics JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqsched.config import load_recipe
from seqsched_cli.main import main
from serving.serve_command import ServeConfig, metrics_path
from tests.synthetic_lengths import write_synthetic_dataset
from tests.tiny_model import synthetic_prompts

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread (see tests/test_runner.py)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch_file(path: Path, prompts: list[str]) -> None:
    lines = [
        json.dumps(
            {
                "custom_id": f"req-{index}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": prompt}], "max_tokens": 40},
            }
        )
        for index, prompt in enumerate(prompts)
    ]
    lines.insert(3, '{"custom_id": "broken", "body": {"messages": "nope"}}')
    path.write_text("\n".join(lines) + "\n")


def serve(tiny_model_dir: Path, tmp_path: Path, name: str, *args: str) -> list[dict]:
    out = tmp_path / f"{name}.jsonl"
    argv = ["serve", "--input", str(tmp_path / "in.jsonl"), "--output", str(out), "--model.spec", str(tiny_model_dir)]
    small = ["--limit", "40", "--bin_width", "5", "--batch_size", "4", "--vbs", "{}", "--progress", "false"]
    assert main([*argv, *small, *args]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_serve_fcr_with_oracle_equals_vanilla(tiny_model_dir: Path, tmp_path: Path) -> None:
    batch_file(tmp_path / "in.jsonl", synthetic_prompts(14, seed=9))
    vanilla = serve(tiny_model_dir, tmp_path, "vanilla", "--strategy", "vanilla")
    assert len(vanilla) == 15 and [line["custom_id"] for line in vanilla][3] == "broken"
    assert vanilla[3]["response"]["status_code"] == 400 and "body.messages" in vanilla[3]["error"]["message"]
    # Oracle: the vanilla run's lengths, read back from its OpenAI Batch output (usage.completion_tokens).
    oracle = tmp_path / "oracle.jsonl"
    oracle.write_text("".join(json.dumps(line) + "\n" for line in vanilla if line["error"] is None))
    scheduled = serve(tiny_model_dir, tmp_path, "fcr", "--strategy", "fcr", "--predictor", f"oracle:{oracle}")
    assert [line["custom_id"] for line in scheduled] == [line["custom_id"] for line in vanilla]
    for theirs, mine in zip(vanilla, scheduled, strict=True):
        if theirs["error"] is None:
            assert mine["response"]["body"]["choices"] == theirs["response"]["body"]["choices"]
            assert mine["response"]["body"]["usage"] == theirs["response"]["body"]["usage"]
    metrics = json.loads(metrics_path(tmp_path / "fcr.jsonl").read_text())
    assert metrics["strategy"] == "fcr" and metrics["requests"] == 14 and metrics["input_errors"] == 1
    assert metrics["predictor"] == f"oracle:{oracle}" and metrics["config"]["strategy"] == "fcr"
    assert (
        metrics["effective_token_ratio"]
        > json.loads(metrics_path(tmp_path / "vanilla.jsonl").read_text())["effective_token_ratio"]
    )


def test_serve_needs_a_predictor_for_scheduling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": "a", "prompt": "hi"}\n')
    assert main(["serve", "--input", str(tmp_path / "in.jsonl"), "--strategy", "fcr"]) == 2
    assert "--strategy fcr orders requests by predicted length" in capsys.readouterr().err
    assert main(["serve", "--input", str(tmp_path / "in.jsonl"), "--predictor", "magic"]) == 2
    assert "--predictor 'magic'" in capsys.readouterr().err


def test_serve_recipes_load() -> None:
    config = load_recipe(ServeConfig, REPO / "recipes" / "smollm2-cpu" / "serve.yaml")
    assert config.strategy.value == "fcr" and config.limit == 512 and config.vbs[50] == 256
    assert config.schedule().vbs == config.vbs
    paper = load_recipe(ServeConfig, REPO / "recipes" / "vicuna-7b-gpu" / "serve.yaml")
    assert (paper.batch_size, paper.limit, paper.token_budget) == (16, 512, 12800)


def test_serve_on_the_continuous_pool_with_each_policy(tiny_model_dir: Path, tmp_path: Path) -> None:
    batch_file(tmp_path / "in.jsonl", synthetic_prompts(10, seed=4))
    vanilla = serve(tiny_model_dir, tmp_path, "vanilla", "--strategy", "vanilla")
    oracle = tmp_path / "oracle.jsonl"
    oracle.write_text("".join(json.dumps(line) + "\n" for line in vanilla if line["error"] is None))
    pool = ["--engine.batching", "continuous", "--engine.slots", "3"]
    for policy in ("fcfs", "sjf", "sjf-fcr"):
        predictor = [] if policy == "fcfs" else ["--predictor", f"oracle:{oracle}"]
        lines = serve(tiny_model_dir, tmp_path, policy, *pool, "--policy", policy, *predictor)
        assert [line["custom_id"] for line in lines] == [line["custom_id"] for line in vanilla]
        for theirs, mine in zip(vanilla, lines, strict=True):
            if theirs["error"] is None:
                assert mine["response"]["body"]["choices"] == theirs["response"]["body"]["choices"], policy
        metrics = json.loads(metrics_path(tmp_path / f"{policy}.jsonl").read_text())
        assert metrics["admission"] == policy and metrics["requests"] == 10
        assert metrics["latency_mean_s"] > 0 and metrics["time_to_half_s"] <= metrics["latency_p99_s"]


def test_serve_skips_the_predictor_when_every_request_fits_in_the_pool(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """10 requests (and a broken line) on a pool of 16 rows all run at once: sjf has no order to choose, so FCFS
    serves and the predictor is not called (no time spent predicting); the outputs are the same. With 8 rows, sjf
    orders."""
    batch_file(tmp_path / "in.jsonl", synthetic_prompts(10, seed=4))
    vanilla = serve(tiny_model_dir, tmp_path, "vanilla", "--strategy", "vanilla")
    oracle = tmp_path / "oracle.jsonl"
    oracle.write_text("".join(json.dumps(line) + "\n" for line in vanilla if line["error"] is None))
    capsys.readouterr()
    pool = ["--engine.batching", "continuous", "--engine.slots", "16", "--policy", "sjf"]
    lines = serve(tiny_model_dir, tmp_path, "roomy", *pool, "--predictor", f"oracle:{oracle}")
    out = capsys.readouterr().out
    assert "all 10 requests run at once (10 <= 16 sequences): FCFS serves, no prediction" in out, out
    metrics = json.loads(metrics_path(tmp_path / "roomy.jsonl").read_text())
    assert metrics["admission"] == "fcfs" and metrics["predictor_s"] == 0.0
    for theirs, mine in zip(vanilla, lines, strict=True):
        if theirs["error"] is None:
            assert mine["response"]["body"]["choices"] == theirs["response"]["body"]["choices"]
    serve(tiny_model_dir, tmp_path, "tight", *pool[:3], "8", *pool[4:], "--predictor", f"oracle:{oracle}")
    assert "FCFS serves" not in capsys.readouterr().out
    assert json.loads(metrics_path(tmp_path / "tight.jsonl").read_text())["admission"] == "sjf"


def test_serve_policy_needs_a_continuous_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": "a", "prompt": "hi"}\n')
    assert main(["serve", "--input", str(tmp_path / "in.jsonl"), "--policy", "sjf"]) == 2
    assert "--policy sjf orders admission on a continuous engine" in capsys.readouterr().err
    argv = ["serve", "--input", str(tmp_path / "in.jsonl"), "--engine.batching", "continuous", "--policy", "sjf"]
    assert main(argv) == 2
    assert "--policy sjf orders requests by predicted length" in capsys.readouterr().err


def test_serve_tunes_on_the_served_requests(tiny_model_dir: Path, tmp_path: Path) -> None:
    batch_file(tmp_path / "in.jsonl", synthetic_prompts(14, seed=9))
    vanilla = serve(tiny_model_dir, tmp_path, "vanilla", "--strategy", "vanilla")
    # The predictor: the vanilla lengths for the served requests, and noisy guesses for a held-out length dataset.
    held_out = write_synthetic_dataset(tmp_path / "held", train=4, validation=40)
    from lengthpred.data import load_length_data

    data = load_length_data(held_out, "validation")
    lines = [
        {"id": line["custom_id"], "true": line["response"]["body"]["usage"]["completion_tokens"]}
        for line in vanilla
        if line["error"] is None
    ]
    lines += [
        {"id": key, "true": max(0, length // 20 + (index % 7) - 3)}
        for index, (key, length) in enumerate(zip(data.ids, data.max_lengths, strict=True))
    ]
    oracle = tmp_path / "oracle.jsonl"
    oracle.write_text("".join(json.dumps(line) + "\n" for line in lines))
    argv = [
        "--strategy",
        "fcr",
        "--predictor",
        f"oracle:{oracle}",
        f"--tune.data={held_out}",
        "--tune.split=validation",
    ]
    argv += ["--tune.draws=2", "--cost.batches=[1,2,4]", "--cost.contexts=2", f"--cost.cache_dir={tmp_path / 'cost'}"]
    tuned = serve(tiny_model_dir, tmp_path, "tuned", *argv)
    for theirs, mine in zip(vanilla, tuned, strict=True):
        if theirs["error"] is None:
            assert mine["response"]["body"]["choices"] == theirs["response"]["body"]["choices"]
    metrics = json.loads(metrics_path(tmp_path / "tuned.jsonl").read_text())
    schedule = metrics["schedule"]
    assert schedule["draws"] == 2 and schedule["simulated_vanilla_s"] > 0
    assert metrics["strategy"] == ("vanilla" if schedule["fallback_to_vanilla"] else "fcr")
    assert metrics["tuning_s"] > 0 and metrics["total_s"] >= metrics["tuning_s"]
    assert metrics["tuning"]["held_out"]["records"] == 40 and metrics["tuning"]["kv_budget"]["tokens"] > 0
    # Forcing the guard: nothing wins by 1000x, so vanilla batches serve.
    guarded = serve(tiny_model_dir, tmp_path, "guarded", *argv, "--tune.min_gain=1000")
    assert len(guarded) == len(vanilla)
    assert json.loads(metrics_path(tmp_path / "guarded.jsonl").read_text())["strategy"] == "vanilla"


def test_serve_kv_admission_on_the_pool(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--kv_admission on our pool with a KV budget: reserve-max and predicted (lpt) serve the same outputs as vanilla;
    auto is chosen by the KV simulation from held-out errors and says what it chose; a static engine refuses it."""
    batch_file(tmp_path / "in.jsonl", synthetic_prompts(10, seed=4))
    vanilla = serve(tiny_model_dir, tmp_path, "vanilla", "--strategy", "vanilla")
    oracle = tmp_path / "oracle.jsonl"
    oracle.write_text("".join(json.dumps(line) + "\n" for line in vanilla if line["error"] is None))
    pool = ["--engine.batching", "continuous", "--engine.slots", "8", "--engine.kv_budget_tokens", "300"]
    runs = {
        "reserve-max": ["--kv_admission", "reserve-max", "--policy", "fcfs"],
        "predicted": ["--kv_admission", "predicted", "--policy", "lpt", "--predictor", f"oracle:{oracle}"],
    }
    held_out = write_synthetic_dataset(tmp_path / "held", train=4, validation=30)
    from lengthpred.data import load_length_data

    data = load_length_data(held_out, "validation")
    guesses = [
        {"id": key, "true": length // 20 + index % 5}
        for index, (key, length) in enumerate(zip(data.ids, data.max_lengths, strict=True))
    ]
    with oracle.open("a") as file:
        file.write("".join(json.dumps(line) + "\n" for line in guesses))
    tuning = [f"--tune.data={held_out}", "--tune.split=validation", "--tune.draws=1"]
    tuning += ["--cost.batches=[1,2,4]", "--cost.contexts=2", f"--cost.cache_dir={tmp_path / 'cost'}"]
    runs["auto"] = ["--kv_admission", "auto", "--predictor", f"oracle:{oracle}", *tuning]
    for name, args in runs.items():
        lines = serve(tiny_model_dir, tmp_path, name, *pool, *args)
        for theirs, mine in zip(vanilla, lines, strict=True):
            if theirs["error"] is None:
                assert mine["response"]["body"]["choices"] == theirs["response"]["body"]["choices"], name
        metrics = json.loads(metrics_path(tmp_path / f"{name}.jsonl").read_text())
        assert metrics["requests"] == 10
        if name == "auto":
            decision = metrics["kv_admission"]
            assert decision["candidates"] and decision["policy"] in {row["policy"] for row in decision["candidates"]}
    assert "KV admission:" in capsys.readouterr().out
    argv = ["serve", "--input", str(tmp_path / "in.jsonl"), "--engine.kind", "hf", "--kv_admission", "reserve-max"]
    assert main([*argv, "--strategy", "vanilla"]) == 2
    assert "admits by KV reservations on a continuous engine" in capsys.readouterr().err
