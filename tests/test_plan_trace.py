"""`seqsched plan`: the exact contract (JSON shape, 12800 rule, recompute ids), errors, no torch."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from seqsched_cli.main import main
from serving.plan_command import read_trace

REPO = Path(__file__).resolve().parent.parent


def write_trace(path: Path, count: int, *, with_true: bool = True, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    lines = []
    for index in range(count):
        predicted = rng.choice([rng.randint(0, 60), rng.randint(0, 400), rng.randint(300, 900)])
        line = {"id": f"q{index}", "predicted": predicted}
        if with_true:
            line["true"] = max(0, int(predicted * rng.uniform(0.5, 1.6)) + rng.randint(-20, 20))
        lines.append(line)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def run_plan(tmp_path: Path, trace: Path, *extra: str) -> dict:
    out = tmp_path / "plan.json"
    assert main(["plan", "--lengths", str(trace), "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("strategy", ["fcr", "vbs", "seqsch", "vanilla"])
def test_plan_contract(tmp_path: Path, strategy: str) -> None:
    lines = write_trace(tmp_path / "trace.jsonl", 700)
    document = run_plan(tmp_path, tmp_path / "trace.jsonl", "--strategy", strategy, "--limit", "512")
    assert set(document) == {"strategy", "batches"} and document["strategy"] == strategy
    initial_cap: dict[str, int] = {}
    recomputed: list[str] = []
    for batch in document["batches"]:
        assert set(batch) == {"phase", "ids", "max_new_tokens"}
        assert batch["phase"] in ("initial", "recompute")
        assert isinstance(batch["max_new_tokens"], int) and 1 <= batch["max_new_tokens"] <= 512
        assert all(isinstance(value, str) for value in batch["ids"]) and batch["ids"]
        assert len(batch["ids"]) == 1 or len(batch["ids"]) * batch["max_new_tokens"] <= 12800, "the 12800 rule"
        if batch["phase"] == "initial":
            assert not recomputed, "initial batches come first"
            for value in batch["ids"]:
                assert value not in initial_cap, "every request exactly once"
                initial_cap[value] = batch["max_new_tokens"]
        else:
            recomputed.extend(batch["ids"])
            assert batch["max_new_tokens"] == 512, "recompute from scratch with the full limit"
    assert set(initial_cap) == {line["id"] for line in lines}
    expected = {line["id"] for line in lines if min(line["true"], 512) > initial_cap[line["id"]]}
    assert sorted(recomputed) == sorted(expected) and len(recomputed) == len(set(recomputed))
    if strategy == "fcr":
        assert expected, "the trace's under-estimates make some requests fail"
    else:
        assert not expected
    if strategy == "vanilla":
        order = [value for batch in document["batches"] for value in batch["ids"]]
        assert order == [line["id"] for line in lines]
        assert {len(batch["ids"]) for batch in document["batches"][:-1]} == {16}


def test_plan_without_true_lengths_has_no_recompute(tmp_path: Path) -> None:
    write_trace(tmp_path / "trace.jsonl", 300, with_true=False)
    document = run_plan(tmp_path, tmp_path / "trace.jsonl")
    assert {batch["phase"] for batch in document["batches"]} == {"initial"}
    assert sum(len(batch["ids"]) for batch in document["batches"]) == 300


def test_plan_uses_the_paper_vbs_table(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps({"id": f"s{i}", "predicted": 10}) + "\n" for i in range(300)))
    batches = run_plan(tmp_path, trace)["batches"]
    assert [(len(b["ids"]), b["max_new_tokens"]) for b in batches] == [(256, 50), (44, 50)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"id": "a", "predicted": 5}\n{"id": "b", "predicted": -1}\n',
            "trace.jsonl:2: 'predicted' must be an integer",
        ),
        ('{"id": "a", "predicted": 5}\nnot json\n', "trace.jsonl:2: invalid JSON"),
        ('{"id": "a", "predicted": 5}\n\n{"id": 3, "predicted": 5}\n', "trace.jsonl:3: 'id' must be a string"),
        ('{"id": "a", "predicted": 5}\n{"id": "a", "predicted": 6}\n', "trace.jsonl:2: duplicate id 'a'"),
        ('{"id": "a"}\n', "trace.jsonl:1: missing 'predicted'"),
        ('{"id": "a", "predicted": 5, "true": 1}\n{"id": "b", "predicted": 5}\n', "'true' is on 1 of 2 lines"),
        ('{"id": "a", "predicted": 5, "true": 2.5}\n', "trace.jsonl:1: 'true' must be an integer"),
        ("", "the trace is empty"),
    ],
)
def test_bad_traces_name_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(content)
    assert main(["plan", "--lengths", str(trace), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "p.json").exists()


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text('\n{"id": "a", "predicted": 5, "true": 70}\n\n{"id": "b", "predicted": 80, "true": 9}\n')
    parsed = read_trace(trace)
    assert parsed.ids == ["a", "b"] and parsed.predicted == [5, 80] and parsed.true == [70, 9]


def test_plan_does_not_import_torch(tmp_path: Path) -> None:
    write_trace(tmp_path / "trace.jsonl", 50)
    code = (
        "import sys; from seqsched_cli.main import main; "
        f"main(['plan', '--lengths', {str(tmp_path / 'trace.jsonl')!r}, '--out', {str(tmp_path / 'p.json')!r}]); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip().endswith("False")
    assert (tmp_path / "p.json").is_file()


def test_plan_tunes_on_a_held_out_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_trace(tmp_path / "trace.jsonl", 400, seed=1)
    write_trace(tmp_path / "held.jsonl", 200, seed=2)
    cost = tmp_path / "cost.json"
    cost.write_text(json.dumps({"fixed_s": 0.08, "per_row_s": 0.003, "per_context_s": 1e-5}))
    argv = ["--limit", "512", "--cost", str(cost)]
    tuned = run_plan(tmp_path, tmp_path / "trace.jsonl", *argv, "--tune_lengths", str(tmp_path / "held.jsonl"))
    printed = capsys.readouterr().out
    assert "tuned on 200 held-out (predicted, true) pairs" in printed and "simulated" in printed
    ids = [value for batch in tuned["batches"] if batch["phase"] == "initial" for value in batch["ids"]]
    assert sorted(ids) == sorted(f"q{index}" for index in range(400)), "every request exactly once"
    if "serving VANILLA" in printed:
        assert tuned["strategy"] == "vanilla"
    else:
        assert tuned["strategy"] == "fcr"
    # Every request runs to the limit and the predictor knows it, and the budget allows no more rows than vanilla's
    # 16 at 512 tokens: nothing to gain, vanilla is planned.
    flat = tmp_path / "flat.jsonl"
    flat.write_text("".join(json.dumps({"id": f"f{i}", "predicted": 512, "true": 512}) + "\n" for i in range(64)))
    document = run_plan(tmp_path, flat, *argv, "--token_budget", "8192", "--tune_lengths", str(flat))
    assert document["strategy"] == "vanilla" and "serving VANILLA batches" in capsys.readouterr().out
    no_true = tmp_path / "no_true.jsonl"
    write_trace(no_true, 10, with_true=False)
    code = main(["plan", "--lengths", str(flat), "--out", str(tmp_path / "x.json"), "--tune_lengths", str(no_true)])
    assert code == 2 and "needs 'true' lengths" in capsys.readouterr().err
