"""`seqsched label` and `seqsched label stats` from the command line, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.commands import LabelConfig
from data_tools.schema import load_length_dataset
from seqsched.config import load_recipe, parse_config
from seqsched.errors import SeqschedError
from seqsched.model_specs import Device, DType
from seqsched_cli.main import main
from tests.threads import one_torch_thread  # noqa: F401 (autouse fixture)
from tests.tiny_model import synthetic_prompts

REPO = Path(__file__).resolve().parent.parent


def write_data(path: Path, count: int) -> Path:
    rows = [{"id": f"r{index}", "prompt": prompt} for index, prompt in enumerate(synthetic_prompts(count, 11))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_label_then_stats(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = write_data(tmp_path / "data.jsonl", 12), tmp_path / "lengths"
    argv = ["label", "--model.spec", str(tiny_model_dir), "--data", str(data), "--out", str(out)]
    argv += ["--temperatures", "0,1.0", "--max_new_tokens", "12", "--batch_size", "8", "--progress", "false"]
    assert main([*argv, "--validation_fraction", "0.25", "--limit", "10"]) == 0
    printed = capsys.readouterr().out
    assert "| train" in printed and "| validation" in printed and "tokens_per_s" in printed
    train, validation = load_length_dataset(out, "train"), load_length_dataset(out, "validation")
    assert len(train) == 8 and len(validation) == 2
    assert sorted([*train["id"], *validation["id"]]) == sorted(f"r{index}" for index in range(10))
    assert all(temps == [0.0, 1.0] for temps in train["temperatures"])
    assert (out / "stats" / "label_hist.png").stat().st_size > 1000

    stats_dir = tmp_path / "stats"
    assert main(["label", "stats", "--dataset", str(out), "--out", str(stats_dir)]) == 0
    report = json.loads((stats_dir / "stats.json").read_text())
    assert set(report["splits"]) == {"train", "validation"}
    assert report["meta"]["max_new_tokens"] == 12
    split = report["splits"]["train"]
    assert split["count"] == 8 and split["max_length"]["max"] <= 12 and split["spread"]["mean"] >= 0
    for name in ("label_hist.png", "greedy_vs_max.png"):
        assert (stats_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Lengths only, in the paper's format, and back: the same labels for the same ids.
    exported = tmp_path / "lengths.json"
    assert main(["label", "export", "--dataset", str(out), "--out", str(exported)]) == 0
    rows = json.loads(exported.read_text())
    assert len(rows) == 10 and set(rows[0]) == {"id", "L_t0.0", "L_t1.0"} and "prompt" not in rows[0]
    rebuilt = tmp_path / "rebuilt"
    argv = ["label", "import", "--lengths", str(exported), "--data", str(data), "--out", str(rebuilt)]
    assert main([*argv, "--max_new_tokens", "12"]) == 0
    again = load_length_dataset(rebuilt, "train")
    original = {row["id"]: row["label"] for part in (train, validation) for row in part}
    assert {row["id"]: row["label"] for row in again} == original


def test_bad_instruction_line_is_one_clear_error(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"id": "a", "prompt": "say cat 2 times"}\n{"id": "b", "prompt": ""}\n')
    argv = ["label", "--model.spec", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{data}:2: empty 'prompt'" in err
    assert main(["label", "--data", str(data)]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["label", "stats", "--dataset", str(tmp_path)]) == 2
    assert "not a dataset folder" in capsys.readouterr().err


def test_temperatures_accept_the_comma_form() -> None:
    def parsed(*argv: str) -> tuple[float, ...]:
        return parse_config(LabelConfig, list(argv), "t").temperatures

    assert parsed("--temperatures", "0,0.3,0.5,0.7") == (0.0, 0.3, 0.5, 0.7)
    assert parsed("--temperatures=0.7", "--seed", "1") == (0.7,)
    assert parsed("--temperatures", "[0, 0.3]") == (0.0, 0.3)
    with pytest.raises(SeqschedError, match="temperatures"):
        parsed("--temperatures", "0,warm")


def test_recipes_hold_the_intended_settings() -> None:
    cpu = load_recipe(LabelConfig, REPO / "recipes" / "smollm2-cpu" / "label.yaml")
    assert cpu.model.spec == "smollm2" and cpu.model.device is Device.CPU and cpu.model.dtype is DType.FLOAT32
    paper = load_recipe(LabelConfig, REPO / "recipes" / "vicuna-7b-gpu" / "label.yaml")
    assert paper.model.spec == "lmsys/vicuna-7b-v1.3" and paper.model.device is Device.CUDA
    assert paper.model.dtype is DType.BFLOAT16
    for config in (cpu, paper):
        assert config.temperatures == (0.0, 0.3, 0.5, 0.7) and config.max_new_tokens == 512 and config.bucket == 50
