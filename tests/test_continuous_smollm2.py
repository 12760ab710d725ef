"""The continuous HF engine with the real SmolLM2 (marker: integration): greedy outputs equal one-request runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from seqsched.engines.hf import HFEngine
from seqsched.engines.hf_continuous import HFContinuousEngine
from serving.demo import builtin_instructions, spread_sample

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_pool_equals_one_request_runs(smollm2_engine: HFEngine) -> None:
    """Six instructions of varied prompt and answer length through three slots with short caps: rows leave and
    join with different cache widths, and every greedy output equals the request run alone."""
    requests = spread_sample(builtin_instructions(), 6)
    prompts = [smollm2_engine.encode(request.chat()) for request in requests]
    caps = [24, 40, 16, 40, 32, 8]
    alone = [smollm2_engine.generate([ids], cap).rows[0] for ids, cap in zip(prompts, caps, strict=True)]
    pool = HFContinuousEngine(smollm2_engine, 3)
    timed = pool.submit(prompts, caps, priorities=[5, 0, 3, 1, 4, 2])
    assert len({len(ids) for ids in prompts}) > 3, "prompts of varied length"
    for reference, item in zip(alone, timed, strict=True):
        assert item.row.token_ids == reference.token_ids
        assert item.row.finish_reason is reference.finish_reason
    stats = pool.last_stats
    assert stats is not None and stats.max_rows == 3 and stats.prefills >= 2
