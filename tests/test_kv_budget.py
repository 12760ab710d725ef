"""A KV budget on our continuous pool (tiny model): greedy admission preempts and recomputes, reserve-max never
preempts but runs few at once, predicted admission with exact lengths runs more at once without preempting; outputs
equal an unbounded pool's whatever the rule; the runner passes the policy's reservations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from seqsched.engines.hf import HFEngine
from seqsched.engines.hf_continuous import HFContinuousEngine
from seqsched.engines.pool_rules import peak_blocks, reservations_fit
from seqsched.errors import SeqschedError
from seqsched.requests import Request
from serving.policy.admission import reservations
from serving.policy.scheduler import Admission, KVAdmission, ScheduleConfig, Strategy
from serving.runner import run
from tests.tiny_model import synthetic_prompts

LIMIT = 30


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompt_ids(tiny_engine: HFEngine) -> list[list[int]]:
    return [tiny_engine.encode(prompt) for prompt in synthetic_prompts(12, seed=11)]


@pytest.fixture(scope="module")
def reference(tiny_engine: HFEngine, prompt_ids: list[list[int]]) -> list[list[int]]:
    timed = HFContinuousEngine(tiny_engine, 12).submit(prompt_ids, [LIMIT] * len(prompt_ids))
    return [item.row.token_ids for item in timed]


def budget_for(prompt_ids: list[list[int]], sequences: int) -> int:
    """Room for about `sequences` requests at full length."""
    return sequences * (max(len(ids) for ids in prompt_ids) + LIMIT + 1)


def test_the_pure_rules() -> None:
    # A request of 10 tokens with 5 to come and one with 100 to come: the short one is gone before the long one
    # peaks, so 110 tokens hold both although their final sizes add up to 125.
    assert peak_blocks([(10, 5), (10, 100)]) == 110
    assert reservations_fit([(10, 5), (10, 100)], 110) and not reservations_fit([(10, 5), (10, 100)], 109)
    assert reservations_fit([(10, 5)], 20, held=5) and not reservations_fit([(10, 5)], 19, held=5)
    assert peak_blocks([(10, 5), (10, 100)], block=16) == 7  # ceil(110 / 16)
    assert peak_blocks([]) == 0


@pytest.mark.parametrize("admit_min", [1, 4])
def test_greedy_preempts_and_outputs_stay_equal(
    tiny_engine: HFEngine, prompt_ids: list[list[int]], reference: list[list[int]], admit_min: int
) -> None:
    """admit_min 4: preempted rows stay in the cache, computed and ignored, until the pool compacts."""
    engine = HFContinuousEngine(tiny_engine, 12, admit_min=admit_min, kv_budget_tokens=budget_for(prompt_ids, 3))
    timed = engine.submit(prompt_ids, [LIMIT] * len(prompt_ids))
    assert [item.row.token_ids for item in timed] == reference
    stats = engine.last_stats
    assert stats is not None and stats.preemptions > 0 and stats.recomputed_tokens > 0


def test_reserve_max_never_preempts_and_predicted_runs_more_at_once(
    tiny_engine: HFEngine, prompt_ids: list[list[int]], reference: list[list[int]]
) -> None:
    budget = budget_for(prompt_ids, 3)
    engine = HFContinuousEngine(tiny_engine, 12, admit_min=1, kv_budget_tokens=budget)
    caps = [LIMIT] * len(prompt_ids)
    reserve_max = engine.submit(prompt_ids, caps, reserves=caps, hold_reservations=True)
    most_reserved = engine.last_stats
    exact = [len(tokens) + 1 for tokens in reference]  # the true lengths (stop token included)
    predicted = engine.submit(prompt_ids, caps, reserves=exact)
    most_predicted = engine.last_stats
    assert [item.row.token_ids for item in reserve_max] == reference
    assert [item.row.token_ids for item in predicted] == reference
    assert most_reserved is not None and most_predicted is not None
    assert most_reserved.preemptions == 0 and most_predicted.preemptions == 0
    assert most_reserved.max_rows <= 3 < most_predicted.max_rows
    assert most_predicted.steps < most_reserved.steps


def test_the_runner_passes_the_policy_reservations(
    tiny_engine: HFEngine, prompt_ids: list[list[int]], reference: list[list[int]]
) -> None:
    requests = [Request(id=str(index), prompt=prompt) for index, prompt in enumerate(synthetic_prompts(12, seed=11))]
    budget = budget_for(prompt_ids, 3)
    engine = HFContinuousEngine(tiny_engine, 12, admit_min=1, kv_budget_tokens=budget)
    true = [len(tokens) for tokens in reference]
    cfg = ScheduleConfig(
        strategy=Strategy.VANILLA, limit=LIMIT, policy=Admission.LPT, kv_admission=KVAdmission.PREDICTED
    )
    result = run(engine, requests, true, cfg)
    assert [record.token_ids for record in result.records] == reference
    submissions = result.extra["submissions"]
    assert submissions[0]["preemptions"] == 0
    assert reservations(KVAdmission.RESERVE_MAX, None, [5, 6], cfg) == [5, 6]
    assert reservations(KVAdmission.GREEDY, None, [5, 6], cfg) is None
    assert reservations(KVAdmission.PREDICTED, [3, 90], [5, 60], cfg) == [4, 60]
    unbounded = HFContinuousEngine(tiny_engine, 12)
    with pytest.raises(SeqschedError, match="kv_admission predicted"):
        run(unbounded, requests, true, cfg)
