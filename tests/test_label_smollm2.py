"""The label builder with the real SmolLM2-135M-Instruct (marker: integration; a few instructions, short cap)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.commands import LabelConfig, run_label
from seqsched.engines.config import EngineConfig
from seqsched.engines.hf import HFEngine
from seqsched.model_specs import ModelConfig
from tests.threads import one_torch_thread  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
CAP = 24


def test_smollm2_labels_match_standalone_generation(tmp_path: Path, smollm2_engine: HFEngine) -> None:
    data = REPO / "data_tools" / "instructions.jsonl"
    config = LabelConfig(
        data=str(data),
        out=str(tmp_path / "lengths"),
        limit=5,
        model=ModelConfig(spec="smollm2"),
        temperatures=(0.0, 0.7),
        max_new_tokens=CAP,
        batch_size=8,
        progress=False,
    )
    engine = HFEngine(smollm2_engine.model, smollm2_engine.tokenizer, EngineConfig(evict_finished=True))
    out, metrics = run_label(config, engine)
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    prompts = [json.loads(line)["prompt"] for line in data.read_text().splitlines()[:5]]
    assert [row["prompt"] for row in rows] == prompts and metrics["generations"] == 10
    for row, prompt in zip(rows, prompts, strict=True):
        alone = smollm2_engine.generate([smollm2_engine.encode(prompt)], CAP).rows[0]
        assert row["greedy_length"] == alone.num_tokens, prompt
        assert row["max_length"] == max(row["lengths"]) <= CAP
        assert row["hit_limit"] == (CAP in row["lengths"])
    print(json.dumps({row["id"]: row["lengths"] for row in rows}), metrics)
