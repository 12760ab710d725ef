"""Data-parallel serving: shards balanced by predicted tokens, outputs gathered in input order, the same outputs
as one process. Real launches on CPU: `accelerate launch` with one process and `torchrun` with two (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seqsched.distributed import Process, current_process
from seqsched.files import write_jsonl
from serving.serve_command import metrics_path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PROMPTS = [f"{verb} {word} {count} times" for verb, word, count in [
    ("say", "cat", 3), ("repeat", "apple", 7), ("say", "dog", 1), ("repeat", "pear", 5), ("say", "sun", 9),
    ("repeat", "moon", 2), ("say", "tree", 4), ("repeat", "sky", 6), ("say", "rain", 8),
]]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("parallel")
    lines = [
        {"custom_id": f"q{i}", "body": {"messages": [{"role": "user", "content": p}]}} for i, p in enumerate(PROMPTS)
    ]
    write_jsonl(folder / "in.jsonl", lines)
    # Skewed predictions: one long request weighs as much as several short ones.
    write_jsonl(
        folder / "oracle.jsonl", [{"id": f"q{i}", "true": 30 if i == 1 else 3 + i} for i in range(len(PROMPTS))]
    )
    return folder


def serve(launcher: list[str], folder: Path, name: str, model: Path) -> list[dict]:
    argv = [
        *launcher,
        "-m",
        "seqsched_cli",
        "serve",
        f"--input={folder / 'in.jsonl'}",
        f"--output={folder / name}",
    ]
    argv += [f"--model.spec={model}", "--strategy=fcr", f"--predictor=oracle:{folder / 'oracle.jsonl'}"]
    argv += ["--limit=40", "--bin_width=5", "--progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def choices(lines: list[dict]) -> list[tuple[str, object]]:
    return [(line["custom_id"], line["response"]["body"]["choices"]) for line in lines]


def test_one_process_without_a_launcher() -> None:
    assert current_process() == Process() and Process().main


def test_accelerate_one_process_and_torchrun_two_equal_a_plain_run(inputs: Path, tiny_model_dir: Path) -> None:
    plain = serve([sys.executable], inputs, "plain.jsonl", tiny_model_dir)
    config = REPO / "recipes" / "accelerate" / "cpu.yaml"
    one = serve([str(BIN / "accelerate"), "launch", f"--config_file={config}"], inputs, "one.jsonl", tiny_model_dir)
    two = serve([str(BIN / "torchrun"), "--nproc_per_node=2"], inputs, "two.jsonl", tiny_model_dir)
    assert [line["custom_id"] for line in two] == [f"q{i}" for i in range(len(PROMPTS))], "input order"
    assert choices(one) == choices(plain) and choices(two) == choices(plain)
    metrics = json.loads(metrics_path(inputs / "two.jsonl").read_text())
    assert metrics["processes"] == 2 and metrics["requests"] == len(PROMPTS)
    assert sum(metrics["shard_sizes"]) == len(PROMPTS)
    # Balanced by predicted tokens, not counts: the long request's shard holds fewer requests.
    assert abs(metrics["shard_predicted_tokens"][0] - metrics["shard_predicted_tokens"][1]) <= 12
    assert metrics["shard_sizes"][0] != metrics["shard_sizes"][1]
