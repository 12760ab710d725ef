"""Scheduled serving with the real SmolLM2 (marker: integration): FCR equals vanilla, request by request."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from serving.demo import builtin_instructions, spread_sample
from serving.engine import HFEngine
from serving.runner import run
from serving.scheduler import RecomputeMode, ScheduleConfig, Strategy

pytestmark = pytest.mark.integration

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
