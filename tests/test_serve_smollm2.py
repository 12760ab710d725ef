"""Scheduled serving with the real SmolLM2 (marker: integration): FCR equals vanilla, request by request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from seqsched.engines.hf import HFEngine
from serving.demo import builtin_instructions, spread_sample
from serving.policy.scheduler import RecomputeMode, ScheduleConfig, Strategy
from serving.runner import run

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent

# A short limit keeps the test near a minute; bins of 12 make FCR's caps and recomputes happen within it.
BASE = ScheduleConfig(strategy=Strategy.VANILLA, limit=48, bin_width=12, batch_size=4, vbs={12: 4, 24: 4, 36: 4})


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: two spinning threads are several times slower on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fcr_with_oracle_and_underestimates_equals_vanilla(smollm2_engine: HFEngine) -> None:
    requests = spread_sample(builtin_instructions(), 12)
    vanilla = run(smollm2_engine, requests, None, BASE)
    true = [record.num_tokens for record in vanilla.records]
    assert len(set(true)) > 3, "the built-in instructions give varied lengths"
    oracle = run(smollm2_engine, requests, true, replace(BASE, strategy=Strategy.FCR))
    halved = [length // 2 for length in true]
    cfg = replace(BASE, strategy=Strategy.FCR, recompute=RecomputeMode.CONTINUE)
    continued = run(smollm2_engine, requests, halved, cfg)
    for name, result in (("oracle", oracle), ("halved+continue", continued)):
        same = [
            mine.token_ids == theirs.token_ids for mine, theirs in zip(result.records, vanilla.records, strict=True)
        ]
        print(f"{name}: {sum(same)}/{len(same)} outputs equal vanilla's, failed {result.metrics.failed}")
        assert all(same)
    assert oracle.metrics.failed == 0 and continued.metrics.failed > 0
    assert oracle.metrics.effective_token_ratio > vanilla.metrics.effective_token_ratio


def test_serve_32_requests_with_a_registered_predictor_by_alias(tmp_path: Path) -> None:
    """label import -> train (sklearn) -> register @champion -> `seqsched serve` 32 OpenAI Batch requests with it."""
    from seqsched_cli.main import main
    from serving.demo import batch_line
    from serving.serve_command import metrics_path

    instructions = builtin_instructions()
    data, lengths = tmp_path / "instructions.jsonl", tmp_path / "lengths.json"
    data.write_text("".join(json.dumps({"id": r.id, "prompt": r.prompt}) + "\n" for r in instructions))
    # Lengths in the paper's format; any varied values train a predictor (its quality is not under test).
    lengths.write_text(json.dumps([{"id": r.id, "L_t0.0": 4 * len(r.prompt.split())} for r in instructions]))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    label = ["label", "import", "--lengths", str(lengths), "--data", str(data), "--out", str(tmp_path / "ds")]
    assert main(label) == 0
    train = ["train", "--config", str(REPO / "recipes" / "sklearn" / "train.yaml"), "--data", str(tmp_path / "ds")]
    train += ["--output_dir", str(tmp_path / "pred"), "--tracking_uri", tracking, "--progress", "false"]
    assert main([*train, "--register-as", "lp", "--alias", "champion"]) == 0

    requests = spread_sample(instructions, 32)
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(batch_line(r, "smollm2", 24)) + "\n" for r in requests))
    common = ["serve", "--input", str(batch), "--model.spec", "smollm2", "--limit", "24", "--progress", "false"]
    assert main([*common, "--strategy", "vanilla", "--output", str(tmp_path / "vanilla.jsonl")]) == 0
    scheduled = ["--strategy", "fcr", "--predictor", "models:/lp@champion", "--tracking_uri", tracking]
    assert main([*common, *scheduled, "--output", str(tmp_path / "fcr.jsonl")]) == 0

    vanilla = [json.loads(line) for line in (tmp_path / "vanilla.jsonl").read_text().splitlines()]
    fcr = [json.loads(line) for line in (tmp_path / "fcr.jsonl").read_text().splitlines()]
    assert [line["custom_id"] for line in fcr] == [r.id for r in requests]
    for mine, theirs in zip(fcr, vanilla, strict=True):
        assert mine["error"] is None
        assert mine["response"]["body"]["choices"] == theirs["response"]["body"]["choices"]
    metrics = json.loads(metrics_path(tmp_path / "fcr.jsonl").read_text())
    assert metrics["requests"] == 32 and metrics["predictor"] == "models:/lp@champion"
