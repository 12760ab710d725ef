"""The KV-bound simulator and tuner (pure): greedy admission preempts when the cache is tight, reservations do not,
predicted reservations run more at once than reserve-max, and the tuner picks predicted admission where KV binds and
falls back to vLLM's rule where it does not."""

from __future__ import annotations

import random

import pytest

from serving.policy.kv_tuning import KVPolicy, KVTuneConfig, Objective, candidates, decide_kv, priorities_for
from serving.policy.scheduler import Admission, KVAdmission, ScheduleConfig, Strategy
from serving.policy.simulate_kv import KVEngine, LengthStats, Resume, simulate_kv
from serving.policy.stepcost import StepCost
from serving.policy.workload import ErrorModel

LIMIT = 256
COST = StepCost()
BASE = ScheduleConfig(strategy=Strategy.VANILLA, limit=LIMIT)


def workload(count: int = 96, seed: int = 3) -> tuple[list[int], list[int], list[int]]:
    """A bimodal length mix like SmolLM2's: a third reach the limit."""
    rng = random.Random(seed)
    true = [LIMIT if rng.random() < 0.35 else rng.randint(5, 120) for _ in range(count)]
    prompts = [rng.randint(20, 60) for _ in range(count)]
    return true, prompts, [LIMIT] * count


def engine(sequences: float) -> KVEngine:
    return KVEngine(kv_tokens=int(sequences * (40 + LIMIT)), max_seqs=256, block_size=16, max_batched_tokens=4096)


def test_roomy_cache_runs_everything_at_once_without_preempting() -> None:
    true, prompts, caps = workload()
    run = simulate_kv(true, prompts, caps, engine(200), COST)
    assert run.preemptions == 0 and run.max_running == len(true)
    assert run.requests == len(true) and run.time_s > 0
    assert max(run.completion_s) == pytest.approx(run.time_s)


def test_greedy_preempts_where_reservations_do_not() -> None:
    true, prompts, caps = workload()
    tight = engine(12)
    greedy = simulate_kv(true, prompts, caps, tight, COST)
    reserve_max = simulate_kv(true, prompts, caps, tight, COST, reserves=caps, hold=True)
    exact = simulate_kv(true, prompts, caps, tight, COST, reserves=[value + 1 for value in true])
    assert greedy.preemptions > 0 and greedy.recomputed_tokens > 0
    assert reserve_max.preemptions == 0 and exact.preemptions == 0
    assert reserve_max.max_running <= 12 < exact.max_running < greedy.max_running
    assert exact.time_s < reserve_max.time_s
    # Which of greedy and exact reservations is faster depends on the step cost: a step with a large fixed part
    # favours greedy's many rows despite its recomputes; with a step cost proportional to its rows it does not.
    per_row = StepCost(fixed_s=0.001, per_row_s=0.004, prefill_fixed_s=0.05)
    assert (
        simulate_kv(true, prompts, caps, tight, per_row, reserves=[v + 1 for v in true]).time_s
        < simulate_kv(true, prompts, caps, tight, per_row).time_s
    )


def test_order_and_resume_modes() -> None:
    true, prompts, caps = workload(48)
    roomy = engine(1000)
    sjf = simulate_kv(true, prompts, caps, roomy, COST, priorities=true)
    fcfs = simulate_kv(true, prompts, caps, roomy, COST)
    assert sjf.time_s == pytest.approx(fcfs.time_s), "with room for all, order changes nothing"
    small = replace_max_seqs(roomy, 8)
    sjf_small = simulate_kv(true, prompts, caps, small, COST, priorities=true)
    fcfs_small = simulate_kv(true, prompts, caps, small, COST)
    assert sjf_small.latency_mean_s < fcfs_small.latency_mean_s
    tight = engine(6)
    scratch = simulate_kv(true, prompts, caps, KVEngine(**{**tight.__dict__, "resume": Resume.SCRATCH}), COST)
    recompute = simulate_kv(true, prompts, caps, tight, COST)
    assert scratch.time_s >= recompute.time_s


def replace_max_seqs(model: KVEngine, seqs: int) -> KVEngine:
    from dataclasses import replace

    return replace(model, max_seqs=seqs)


def test_priorities_and_candidates() -> None:
    assert priorities_for(Admission.FCFS, None, BASE) is None
    assert priorities_for(Admission.SJF, [5, 9], BASE) == [5, 9]
    assert priorities_for(Admission.LPT, [5, 9], BASE) == [-5, -9]
    names = [policy.name for policy in candidates(KVTuneConfig(margins=(0.0,)), True)]
    assert names[0] == "greedy-fcfs" and "predicted-lpt+0" in names and "reserve-max-fcfs" in names
    assert KVPolicy(KVAdmission.PREDICTED, Admission.SJF, 0.3).config(BASE).margin_ratio == 0.3
    # An engine that does not admit by reservations (vLLM's own scheduler, our pool without a KV budget): the order.
    orders_only = candidates(KVTuneConfig(margins=(0.0,), reservations=False), True)
    assert [policy.name for policy in orders_only] == ["greedy-fcfs", "greedy-sjf", "greedy-lpt"]


def test_the_tuner_picks_the_best_safe_candidate_and_falls_back_where_nothing_wins() -> None:
    """With a step cost proportional to the rows, no rule changes the total work much (throughput: the baseline
    serves), but predicted admission in sjf order cuts the mean latency without preempting; with room for every
    request nothing changes at all."""
    true, prompts, caps = workload()
    per_row = StepCost(fixed_s=0.001, per_row_s=0.004, prefill_fixed_s=0.05)
    by_latency = KVTuneConfig(objective=Objective.LATENCY)
    tight = decide_kv(true, prompts, caps, ErrorModel.exact(), engine(12), per_row, BASE, by_latency)
    assert not tight.fallback and tight.policy.kv_admission is KVAdmission.PREDICTED
    assert tight.policy.order is Admission.SJF and tight.chosen["preemptions"] == 0
    assert tight.chosen["latency_mean_s"] < 0.8 * tight.baseline["latency_mean_s"]
    assert tight.chosen["time_s"] <= tight.baseline["time_s"]
    safe = [row for row in tight.as_dict()["candidates"] if row["time_s"] <= tight.baseline["time_s"] * 1.0001]
    assert tight.chosen["latency_mean_s"] == pytest.approx(min(row["latency_mean_s"] for row in safe), rel=1e-3)
    throughput = decide_kv(true, prompts, caps, ErrorModel.exact(), engine(12), per_row, BASE)
    assert throughput.fallback == (throughput.chosen is throughput.baseline or throughput.policy == KVPolicy())
    roomy = decide_kv(true, prompts, caps, ErrorModel.exact(), engine(200), COST, BASE, by_latency)
    assert roomy.fallback and roomy.policy == KVPolicy()
    noisy = ErrorModel.fit([max(1, value // 2) for value in true], true)
    drawn = decide_kv(true, prompts, caps, noisy, engine(12), per_row, BASE, by_latency)
    assert drawn.chosen["latency_mean_s"] <= drawn.baseline["latency_mean_s"]
    assert "KV admission" in tight.describe() and tight.as_dict()["candidates"]


def test_holds_all_counts_sequences_and_whole_blocks() -> None:
    """Every request runs at once only when there are no more than max_seqs and the cache holds each one's prompt
    and whole budget in whole blocks (one block kept out, vLLM's null block)."""
    prompts, budgets = [20, 40, 5], [30, 24, 11]  # 50, 64, 16 tokens: 4 + 4 + 1 blocks of 16
    roomy = KVEngine(kv_tokens=10 * 16, max_seqs=3, block_size=16)
    assert roomy.holds_all(prompts, budgets)
    assert not KVEngine(kv_tokens=9 * 16, max_seqs=3, block_size=16).holds_all(prompts, budgets)
    assert not KVEngine(kv_tokens=100 * 16, max_seqs=2, block_size=16).holds_all(prompts, budgets)
    by_token = KVEngine(kv_tokens=130, max_seqs=3, block_size=1, null_blocks=0)
    assert by_token.holds_all(prompts, budgets) and not by_token.holds_all(prompts, [30, 24, 12])
    with pytest.raises(ValueError, match="one budget per prompt"):
        roomy.holds_all(prompts, budgets[:2])


def test_holds_all_by_held_out_lengths_when_whole_budgets_do_not_fit() -> None:
    """256 prompts of 45 tokens with budgets of 256 need 768 blocks of 128 with whole budgets; a 600-block cache
    does not hold that, but by held-out lengths (mean 129, sd 105: SmolLM2's usual answers) the expected final
    contexts, half a block of rounding each and two standard deviations of the sum need ~64k of its 76.7k tokens;
    long answers (mean 250) would need ~92k."""
    prompts, budgets = [45] * 256, [256] * 256
    cache = KVEngine(kv_tokens=601 * 128, max_seqs=256, block_size=128)
    assert cache.total_blocks == 600 and not cache.holds_all(prompts, budgets)
    usual = LengthStats(128.6, 105.2)
    assert cache.holds_all(prompts, budgets, usual)
    assert cache.needed_tokens(prompts, budgets, usual) == pytest.approx(256 * (45 + 128.6 + 64) + 2 * 105.2 * 16, 1)
    assert not cache.holds_all(prompts, budgets, LengthStats(250.0, 20.0)), "long answers: the expected sum is too big"
    assert not cache.holds_all([45] * 257, [256] * 257, usual), "more requests than sequences"
    assert LengthStats.of([10, 30]) == LengthStats(20.0, 10.0)


def test_padded_pool_makes_the_continuous_simulators_steps() -> None:
    """Our pool's layout (KVEngine.pool) without a KV bound, equal prompts and a step cost blind to the context:
    the same completion times as serving.policy.simulate_continuous (newcomers wait for admit_min free slots and
    share one prefill, finished rows are computed until the pool compacts)."""
    from serving.policy.admission import Pass
    from serving.policy.simulate_continuous import simulate_pass

    rng = random.Random(5)
    # (No request done by its prefill's token: the engine then decodes before it admits again, as this simulator
    # does, where simulate_continuous admits again at once.)
    true = [rng.choice([1, 3, 40, 120, LIMIT]) for _ in range(70)]
    caps = [LIMIT] * len(true)
    cost = StepCost(fixed_s=0.02, per_row_s=0.001, per_context_s=0.0, prefill_fixed_s=0.05, prefill_token_s=1e-4)
    pool = KVEngine.pool(1 << 40, 16)
    assert pool.admit_min == 2
    padded = simulate_kv(true, [32] * len(true), caps, pool, cost)
    continuous, _ = simulate_pass(true, Pass(None, caps), 16, cost, prompt_tokens=32, admit_min=pool.admit_min)
    assert padded.completion_s == pytest.approx(continuous.completion_s)
    assert padded.time_s == pytest.approx(continuous.time_s)


def test_padded_pool_pays_for_its_width_and_its_prefills() -> None:
    """Where a step costs by the context, the padded pool pays the longest context of every row (finished ones
    until it compacts) and prefills padded to the longest prompt: slower than the paged engine's mean context on
    the same KV rule, and the same requests preempted and restarted under a tight budget."""
    true, prompts, caps = workload(64)
    prompts = [value * 4 if index % 8 == 0 else value for index, value in enumerate(prompts)]  # a few long prompts
    cost = StepCost(per_context_s=2e-5, prefill_token_s=5e-4)
    tokens = 12 * (40 + LIMIT)
    paged = KVEngine(kv_tokens=tokens, max_seqs=32, block_size=1, max_batched_tokens=None, null_blocks=0)
    paged = KVEngine(**{**paged.__dict__, "resume": Resume.SCRATCH, "admit_min": 4})
    pool = KVEngine.pool(tokens, 32)
    for reserves in (None, caps):
        on_pool = simulate_kv(true, prompts, caps, pool, cost, reserves=reserves)
        on_paged = simulate_kv(true, prompts, caps, paged, cost, reserves=reserves)
        assert on_pool.requests == on_paged.requests == len(true)
        assert on_pool.time_s > on_paged.time_s
    greedy = simulate_kv(true, prompts, caps, pool, cost)
    assert greedy.preemptions > 0 and greedy.recomputed_tokens > 0
    assert simulate_kv(true, prompts, caps, pool, cost, reserves=caps, hold=True).preemptions == 0


def test_padded_pool_prices_its_cache_copies() -> None:
    """With a free step and a copy cost of 1 s per row and column, a run's time is its copies: no copy when the
    first rows join an empty pool; a compaction gathers the kept rows over the buffer's columns (prompt + first
    token + the 64 spare); a join copies every row at the wider width plus the spare; the last rows leave free."""
    free = StepCost(fixed_s=0, per_row_s=0, per_context_s=0, prefill_fixed_s=0, prefill_token_s=0)
    pool = KVEngine.pool(1 << 40, 4, admit_min=1, copy_slot_s=1.0)
    run = simulate_kv([2, 5, 5, 5, 5], [10] * 5, [100] * 5, pool, free)
    # 3 kept x (11 + 64) at the first compaction, 4 x (13 + 64) at the join, 1 x 77 when three finish together.
    assert run.copy_s == run.time_s == 3 * 75 + 4 * 77 + 77
    # A buffer without a spare column grows to twice its filled width (one request: 11 + 2 columns, full after two
    # steps, 13 + 13 then).
    alone = simulate_kv([5], [10], [100], KVEngine.pool(1 << 40, 1, copy_slot_s=1.0, reserve=2), free)
    assert alone.copy_s == 26
    # Copies do not change the schedule: the same steps and completions, later by the copies before them.
    true, prompts, caps = workload(48)
    cost = StepCost()
    tokens = 10 * (40 + LIMIT)
    for reserves in (None, caps):
        base = simulate_kv(true, prompts, caps, KVEngine.pool(tokens, 16), cost, reserves=reserves)
        priced = simulate_kv(true, prompts, caps, KVEngine.pool(tokens, 16, copy_slot_s=1e-6), cost, reserves=reserves)
        assert priced.steps == base.steps and priced.preemptions == base.preemptions
        assert priced.copy_s > 0 and priced.time_s == pytest.approx(base.time_s + priced.copy_s)
        assert priced.summary()["copy_s"] == priced.copy_s
    with pytest.raises(ValueError, match="copy_slot_s"):
        KVEngine.pool(tokens, 16, copy_slot_s=-1.0)
