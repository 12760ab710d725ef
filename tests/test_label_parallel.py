"""Data-parallel labelling: instructions sharded over processes (torchrun, 2 CPU processes), one checkpoint per
shard, the dataset merged in input order and equal to a one-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from data_tools.schema import load_length_dataset
from tests.tiny_model import synthetic_prompts

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def label(launcher: list[str], data: Path, out: Path, model: Path) -> None:
    argv = [*launcher, "-m", "seqsched_cli", "label", f"--data={data}", f"--out={out}", f"--model.spec={model}"]
    argv += ["--temperatures=0,0.8", "--samples_per_temperature=2", "--max_new_tokens=24", "--batch_size=4"]
    argv += ["--progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_label_like_one(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "data.jsonl"
    rows = [{"id": f"i{index}", "prompt": prompt} for index, prompt in enumerate(synthetic_prompts(11, seed=5))]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    label([sys.executable], data, tmp_path / "one", tiny_model_dir)
    # A shard's checkpoint left by an interrupted parallel run is resumed (its samples are not generated again).
    two = tmp_path / "two"
    label([str(BIN / "torchrun"), "--nproc_per_node=2"], data, two, tiny_model_dir)
    one_set, two_set = load_length_dataset(tmp_path / "one"), load_length_dataset(two)
    assert list(two_set["id"]) == [row["id"] for row in rows], "input order"
    assert list(two_set["lengths"]) == list(one_set["lengths"])
    assert list(two_set["label"]) == list(one_set["label"])
    assert not (tmp_path / "two.partial").exists(), "the working folder is removed once the dataset is written"
