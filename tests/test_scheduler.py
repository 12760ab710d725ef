"""The pure scheduling policy: hand-checked plans and properties over random predictions."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.policy.scheduler import (
    PAPER_VBS,
    Phase,
    RecomputeMode,
    ScheduleConfig,
    Strategy,
    adjusted_length,
    batch_size_for,
    bin_cap,
    failed_requests,
    plan,
    recompute_plan,
    request_bins,
)

lengths = st.lists(st.integers(min_value=0, max_value=700), min_size=0, max_size=300)
configs = st.builds(
    ScheduleConfig,
    strategy=st.sampled_from(list(Strategy)),
    limit=st.integers(min_value=1, max_value=600),
    bin_width=st.integers(min_value=1, max_value=120),
    batch_size=st.integers(min_value=1, max_value=40),
    vbs=st.dictionaries(st.integers(1, 600), st.integers(1, 300), max_size=6),
    token_budget=st.one_of(st.none(), st.integers(min_value=1, max_value=20000)),
    margin_tokens=st.integers(min_value=0, max_value=60),
    margin_ratio=st.sampled_from([0.0, 0.1, 0.25]),
)


def test_paper_defaults() -> None:
    cfg = ScheduleConfig()
    assert (cfg.strategy, cfg.limit, cfg.bin_width, cfg.batch_size) == (Strategy.FCR, 512, 50, 16)
    assert cfg.vbs == PAPER_VBS == {50: 256, 100: 128, 150: 64, 200: 32, 250: 16, 300: 16}
    assert [batch_size_for(edge, cfg) for edge in (50, 100, 150, 200, 250, 300, 350, 512)] == [
        256,
        128,
        64,
        32,
        16,
        16,
        16,
        16,
    ]
    assert batch_size_for(100, replace(cfg, token_budget=6400)) == 64


def test_bins_margin_and_caps() -> None:
    cfg = ScheduleConfig(margin_tokens=10, margin_ratio=0.5)
    assert adjusted_length(0, cfg) == 10 and adjusted_length(40, cfg) == 70
    assert bin_cap(1, cfg) == 50 and bin_cap(50, cfg) == 50 and bin_cap(51, cfg) == 100 and bin_cap(999, cfg) == 512
    assert request_bins([0, 40, 600], [512, 30, 512], cfg) == [50, 50, 512]


def test_vanilla_keeps_input_order_and_fixed_batches() -> None:
    batches = plan([500, 3, 7, 9, 1], ScheduleConfig(strategy=Strategy.VANILLA, batch_size=2))
    assert [b.request_ids for b in batches] == [(0, 1), (2, 3), (4,)]
    assert {b.max_new_tokens for b in batches} == {512}


def test_seqsch_sorts_by_prediction_with_fixed_batches() -> None:
    batches = plan([500, 3, 7, 3, 1], ScheduleConfig(strategy=Strategy.SEQSCH, batch_size=2))
    assert [b.request_ids for b in batches] == [(4, 1), (3, 2), (0,)]
    assert {b.max_new_tokens for b in batches} == {512}


def test_fcr_bins_vbs_and_leftovers_move_to_the_next_bin() -> None:
    cfg = ScheduleConfig(vbs={50: 4, 100: 2}, batch_size=1)
    predicted = [10, 20, 30, 40, 45, 60, 300]
    batches = plan(predicted, cfg)
    assert [(b.request_ids, b.max_new_tokens) for b in batches] == [
        ((0, 1, 2, 3), 50),
        ((4, 5), 100),  # the 50-bin's leftover joins the 100-bin
        ((6,), 300),
    ]
    # VBS without FCR: same groups, no cap below the limit.
    assert [(b.request_ids, b.max_new_tokens) for b in plan(predicted, replace(cfg, strategy=Strategy.VBS))] == [
        ((0, 1, 2, 3), 512),
        ((4, 5), 512),
        ((6,), 512),
    ]


def test_own_limits_cap_batches() -> None:
    cfg = ScheduleConfig(vbs={50: 4}, batch_size=4)
    batches = plan([400, 400, 10], cfg, limits=[30, 20, 512])
    assert [(b.request_ids, b.max_new_tokens) for b in batches] == [((2, 0, 1), 50)]
    vanilla = plan([0, 0], replace(cfg, strategy=Strategy.VANILLA), limits=[30, 20])
    assert vanilla[0].max_new_tokens == 30


def test_recompute_groups_by_remaining_budget() -> None:
    cfg = ScheduleConfig(vbs={50: 3, 500: 2}, batch_size=1)
    batches = recompute_plan([7, 3, 5, 9], cfg, {7: 462, 3: 20, 5: 412, 9: 30})
    assert all(b.phase is Phase.RECOMPUTE for b in batches)
    assert [(b.request_ids, b.max_new_tokens) for b in batches] == [((3, 9), 30), ((5, 7), 462)]
    scratch = recompute_plan([4, 2], cfg)
    assert [(b.request_ids, b.max_new_tokens) for b in scratch] == [
        ((2,), 512),
        ((4,), 512),
    ]  # above the table: batch_size
    assert recompute_plan([], cfg) == []
    with pytest.raises(ValueError):
        recompute_plan([1, 1], cfg)


def test_config_is_checked_and_vbs_keys_become_integers() -> None:
    assert ScheduleConfig(vbs={"50": "8"}).vbs == {50: 8}  # type: ignore[dict-item]
    for bad in ({"limit": 0}, {"bin_width": 0}, {"batch_size": 0}, {"token_budget": 0}, {"margin_tokens": -1}):
        with pytest.raises(ValueError):
            ScheduleConfig(**bad)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(predicted=lengths, cfg=configs, data=st.data())
def test_plan_properties(predicted: list[int], cfg: ScheduleConfig, data: st.DataObject) -> None:
    limits = data.draw(st.lists(st.integers(1, 700), min_size=len(predicted), max_size=len(predicted)))
    own = [min(cfg.limit, value) for value in limits]
    batches = plan(predicted, cfg, limits)
    scheduled = Counter(index for batch in batches for index in batch.request_ids)
    assert scheduled == Counter(range(len(predicted))), "every request exactly once"
    for batch in batches:
        assert len(batch) >= 1 and batch.phase is Phase.INITIAL
        assert 1 <= batch.max_new_tokens <= cfg.limit
        assert batch.max_new_tokens <= max(own[index] for index in batch.request_ids)
        if cfg.token_budget is not None and len(batch) > 1:
            assert len(batch) * batch.max_new_tokens <= cfg.token_budget, "no batch over the token budget"
    if cfg.strategy is Strategy.VANILLA:
        assert [index for b in batches for index in b.request_ids] == list(range(len(predicted)))
    if cfg.strategy is Strategy.SEQSCH:
        order = [predicted[index] for b in batches for index in b.request_ids]
        assert order == sorted(order)
    if cfg.strategy is Strategy.FCR:
        bins = request_bins(predicted, own, cfg)
        for batch in batches:  # the cap covers every member's (margin-adjusted) bin, unless its own limit is lower
            assert all(batch.max_new_tokens >= min(bins[i], own[i]) for i in batch.request_ids)
    if cfg.strategy is Strategy.FCR:  # without own limits, every batch is full for its bin but the plan's last
        for batch in plan(predicted, cfg)[:-1]:
            assert len(batch) == batch_size_for(batch.max_new_tokens, cfg)


@settings(max_examples=300, deadline=None)
@given(predicted=lengths, cfg=configs, data=st.data())
def test_recompute_covers_exactly_the_failed(predicted: list[int], cfg: ScheduleConfig, data: st.DataObject) -> None:
    true = data.draw(st.lists(st.integers(0, 800), min_size=len(predicted), max_size=len(predicted)))
    own = [cfg.limit] * len(predicted)
    batches = plan(predicted, cfg)
    failed = failed_requests(batches, true, own)
    if cfg.strategy is not Strategy.FCR:
        assert failed == [], "only FCR caps a batch below the limit"
    remaining = {index: data.draw(st.integers(1, cfg.limit)) for index in failed}
    second = recompute_plan(failed, cfg, remaining)
    assert Counter(index for b in second for index in b.request_ids) == Counter(failed)
    for batch in second:
        assert batch.phase is Phase.RECOMPUTE
        assert all(batch.max_new_tokens >= remaining[index] for index in batch.request_ids), "nothing fails twice"
        if cfg.token_budget is not None and len(batch) > 1:
            assert len(batch) * batch.max_new_tokens <= cfg.token_budget


def test_recompute_goes_by_failed_cap_then_predicted_length() -> None:
    cfg = ScheduleConfig(vbs={}, batch_size=2, limit=512)
    failed = [0, 1, 2, 3, 4, 5]
    caps = {0: 200, 1: 50, 2: 200, 3: 50, 4: 100, 5: 50}
    predicted = [180, 40, 150, 10, 90, 45]
    batches = recompute_plan(failed, cfg, failed_caps=caps, predicted=predicted)
    assert [b.request_ids for b in batches] == [(3, 1), (5, 4), (2, 0)]  # caps 50, 50 | 50, 100 | 200, 200
    assert {b.max_new_tokens for b in batches} == {512} and all(b.phase is Phase.RECOMPUTE for b in batches)


def test_token_budget_counts_prompt_and_cap() -> None:
    cfg = ScheduleConfig(vbs={50: 8, 100: 8}, batch_size=8, limit=100, token_budget=600)
    # Rows of prompt 50 + cap 50 = 100 tokens: six fit; a 250-token prompt needs a batch to itself at cap 50
    batches = plan([10] * 7 + [60] * 2, cfg, prompts=[50] * 7 + [10, 250])
    assert [(b.request_ids, b.max_new_tokens) for b in batches] == [
        ((0, 1, 2, 3, 4, 5), 50),
        ((6, 7), 100),  # the 50-bin's leftover joins the 100-bin: 2 x (50 + 100) = 300
        ((8,), 100),  # 3 x (250 + 100) would be 1050
    ]
    # Without prompt lengths the budget counts the cap alone (the plan contract's rule).
    assert [len(b) for b in plan([10] * 7, cfg)] == [7]
    vanilla = plan([0] * 5, replace(cfg, strategy=Strategy.VANILLA), prompts=[100] * 5)
    assert [len(b) for b in vanilla] == [3, 2]  # 3 x (100 + 100) = 600


budget_configs = st.builds(
    ScheduleConfig,
    strategy=st.sampled_from(list(Strategy)),
    limit=st.integers(min_value=1, max_value=600),
    bin_width=st.integers(min_value=1, max_value=120),
    batch_size=st.integers(min_value=1, max_value=64),
    vbs=st.dictionaries(st.integers(1, 600), st.integers(1, 300), max_size=6),
    token_budget=st.integers(min_value=1, max_value=40000),
    margin_tokens=st.integers(min_value=0, max_value=60),
    recompute=st.sampled_from(list(RecomputeMode)),
)


@settings(max_examples=300, deadline=None)
@given(predicted=lengths, cfg=budget_configs, data=st.data())
def test_no_batch_above_the_kv_budget(predicted: list[int], cfg: ScheduleConfig, data: st.DataObject) -> None:
    count = len(predicted)
    prompts = data.draw(st.lists(st.integers(0, 500), min_size=count, max_size=count))
    limits = data.draw(st.lists(st.integers(1, 700), min_size=count, max_size=count))
    true = data.draw(st.lists(st.integers(0, 800), min_size=count, max_size=count))
    own = [min(cfg.limit, value) for value in limits]
    batches = plan(predicted, cfg, limits, prompts)
    assert Counter(i for b in batches for i in b.request_ids) == Counter(range(count)), "every request exactly once"
    budget = cfg.token_budget
    assert budget is not None
    for batch in batches:
        widest = max(prompts[index] for index in batch.request_ids)
        assert len(batch) == 1 or len(batch) * (widest + batch.max_new_tokens) <= budget, "no batch over the budget"
        assert batch.max_new_tokens <= max(own[index] for index in batch.request_ids)
    if cfg.strategy is Strategy.FCR:
        bins = request_bins(predicted, own, cfg)
        for batch in batches:
            assert all(batch.max_new_tokens >= min(bins[i], own[i]) for i in batch.request_ids)
    failed = failed_requests(batches, true, own)
    caps = {index: batch.max_new_tokens for batch in batches for index in batch.request_ids}
    if cfg.recompute is RecomputeMode.CONTINUE:
        remaining = {index: own[index] - min(caps[index] + 1, own[index] - 1) for index in failed}
        fed = {index: prompts[index] + caps[index] + 1 for index in failed}
    else:
        remaining = {index: own[index] for index in failed}
        fed = {index: prompts[index] for index in failed}
    second = recompute_plan(failed, cfg, remaining, failed_caps=caps, predicted=predicted, prompts=fed)
    assert Counter(i for b in second for i in b.request_ids) == Counter(failed), "every failure exactly once"
    for batch in second:
        assert all(batch.max_new_tokens >= remaining[index] for index in batch.request_ids), "caps cover budgets"
        widest = max(fed[index] for index in batch.request_ids)
        assert len(batch) == 1 or len(batch) * (widest + batch.max_new_tokens) <= budget
