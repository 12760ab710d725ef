"""The real SmolLM2-135M-Instruct through the engine and the demo (marker: integration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqsched.engines.api import FinishReason
from seqsched.engines.hf import HFEngine
from seqsched_cli.main import main

pytestmark = pytest.mark.integration

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "Explain what a CPU does.",
    "Translate 'good night' into German.",
    "List four animals that live in the ocean.",
]


def test_greedy_batch_matches_alone(smollm2_engine: HFEngine) -> None:
    ids = [smollm2_engine.encode(prompt) for prompt in PROMPTS]
    batch = smollm2_engine.generate(ids, 48)
    matches = sum(
        smollm2_engine.generate([prompt_ids], 48).rows[0].token_ids == row.token_ids
        for prompt_ids, row in zip(ids, batch.rows, strict=True)
    )
    print(f"greedy alone == in padded batch: {matches}/{len(ids)}")
    assert matches == len(ids)
    assert "Paris" in batch.rows[0].text
    assert batch.rows[0].finish_reason is FinishReason.STOP


def test_demo_prints_real_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "demo"
    argv = [
        "demo",
        "--mode",
        "answers",
        "--prompts",
        "3",
        "--max_new_tokens",
        "24",
        "--batch_size",
        "3",
        "--out_dir",
        str(out_dir),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "tokens_per_s" in printed
    answers = [json.loads(line) for line in (out_dir / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and all(a["output"].strip() for a in answers)
    assert "Tokyo" in answers[0]["output"]
