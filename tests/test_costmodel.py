"""The step-cost grid on the tiny model: probes, both fits checked leave-one-out, the per-machine cache; and the
KV-cache budget from the model's size and the machine's free memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqsched.engines.hf import HFEngine
from seqsched.errors import SeqschedError
from seqsched.model_specs import DType, ModelConfig
from serving.measure.costmodel import (
    CostConfig,
    StepSample,
    fit_grid,
    fit_linear,
    fit_models,
    grid_contexts,
    grid_probes,
    leave_one_out,
    load_cost_file,
    load_or_measure,
)
from serving.measure.memory import GIB, MemoryConfig, kv_budget, kv_bytes_per_token
from serving.policy.stepcost import GridStepCost, StepCost

SMOLLM2_CONFIG = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_grid_contexts_and_probes() -> None:
    assert grid_contexts(32, 320, 4) == [32, 69, 149, 320]
    assert grid_contexts(32, 20, 4) == [32]
    probes = grid_probes([1, 2, 4, 8, 16, 32, 64, 128, 256], [32, 320], 4096)
    assert [b for b, c in probes if c == 32] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert [b for b, c in probes if c == 320] == [1, 2, 4, 8], "the two smallest always, then up to 4096 tokens"


def test_fit_models_check_both_leave_one_out() -> None:
    truth = StepCost(fixed_s=0.05, per_row_s=0.002, per_context_s=3e-5, context_s=1e-4, prefill_token_s=1e-3)
    samples = [
        StepSample(b, p, 4, truth.prefill_s(b, p), truth.step_s(b, p + 2) * 3)
        for p in (30, 90, 300)
        for b in (1, 4, 16, 64)
    ]
    document = fit_models(samples, steps=4)
    for name in ("grid", "linear"):
        errors = document["leave_one_out"][name]
        assert errors["decode_max_abs_error"] < 1e-6, f"{name}: a bilinear cost is fitted exactly"
    assert document["model"] in ("grid", "linear")
    # On a curved cost the table, read locally, beats the straight formula.
    curved = [
        StepSample(b, p, 4, 0.01 * b, (0.05 + 1e-6 * (b * (p + 2)) ** 1.5) * 3)
        for p in (30, 90, 200, 300)
        for b in (1, 4, 16, 32, 64)
    ]
    document = fit_models(curved, steps=4)
    checks = document["leave_one_out"]
    assert checks["grid"]["decode_mean_abs_error"] < checks["linear"]["decode_mean_abs_error"]
    assert document["model"] == "grid"
    decode = [(s.batch, s.prompt_tokens + 2.0, s.step_s) for s in curved]
    prefill = [(s.batch, float(s.prompt_tokens), s.prefill_s) for s in curved]
    assert len(leave_one_out(decode, prefill, fit_grid).decode) == len(curved)
    assert isinstance(fit_linear(decode, prefill), StepCost)


def test_load_or_measure_caches_per_machine_and_model(
    tiny_engine: HFEngine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = ModelConfig(spec=str(tiny_model_dir))
    config = CostConfig(batches=(1, 2, 4), contexts=2, min_context=8, steps=3, probe_tokens=64, cache_dir=str(tmp_path))
    first = load_or_measure(tiny_engine, model, "hf", config, max_context=40)
    assert not first.reused and first.path is not None and first.path.parent == tmp_path
    document = json.loads(first.path.read_text())
    import torch

    # The identity names the thread count the grid was measured with: this module's one thread, or what a vLLM
    # engine started earlier in the session left (vLLM makes torch.set_num_threads a no-op in-process).
    threads = torch.get_num_threads()
    assert document["contexts"] == [8, 40] and document["identity"]["torch_threads"] == threads
    assert len(document["samples"]) == 3 + 2, "(1, 2, 4) at 8 tokens; the two smallest at 40 (4 x 40 > 64)"
    assert set(document["leave_one_out"]) == {"grid", "linear"}
    assert first.cost.step_s(3, 20) > 0 and first.cost.prefill_s(3, 20) > 0
    again = load_or_measure(tiny_engine, model, "hf", config, max_context=40)
    assert again.reused and again.path == first.path and again.document == document
    assert not load_or_measure(tiny_engine, model, "hf", config, max_context=60).reused, "the grid must reach 60"
    # A grid timed on an engine that ran fewer rows at once (vLLM with fewer sequences) does not serve a larger one;
    # a larger one serves a smaller.
    fewer = CostConfig(**{**config.__dict__, "batches": (1, 2)})
    assert load_or_measure(tiny_engine, model, "hf", fewer, max_context=40).reused
    larger = CostConfig(**{**config.__dict__, "batches": (1, 2, 8)})
    assert not load_or_measure(tiny_engine, model, "hf", larger, max_context=40).reused
    assert load_or_measure(tiny_engine, model, "hf", config, max_context=40).reused, "measured up to 8 now"
    forced = load_or_measure(tiny_engine, model, "hf", CostConfig(**{**config.__dict__, "remeasure": True}), 40)
    assert not forced.reused
    given = load_or_measure(tiny_engine, model, "hf", CostConfig(file=str(first.path)), 40)
    assert given.reused and isinstance(given.cost, GridStepCost | StepCost)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SeqschedError, match="not a step-cost JSON"):
        load_cost_file(bad)


def test_kv_budget_from_model_size_and_memory(tiny_model_dir: Path) -> None:
    assert kv_bytes_per_token(SMOLLM2_CONFIG, 4) == 30 * 3 * 64 * 2 * 4 == 46080
    assert kv_bytes_per_token({"text_config": SMOLLM2_CONFIG}, 2) == 23040
    with pytest.raises(SeqschedError):
        kv_bytes_per_token({"num_hidden_layers": 2}, 4)
    model = ModelConfig(spec=str(tiny_model_dir), dtype=DType.FLOAT32)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    per_token = kv_bytes_per_token(config, 4)
    assert kv_budget(5000, MemoryConfig(), model).tokens == 5000
    given = kv_budget(None, MemoryConfig(kv_budget_gib=0.5), model)
    assert given.tokens == int(0.5 * GIB // per_token) and given.bytes_per_token == per_token
    derived = kv_budget(None, MemoryConfig(kv_memory_fraction=0.25), model)
    assert derived.tokens is not None and derived.free_bytes is not None
    assert derived.tokens == pytest.approx(derived.free_bytes * 0.25 / per_token, rel=1e-6, abs=1)
    assert "KV-cache budget" in derived.describe()
    assert kv_budget(None, MemoryConfig(kv_memory_fraction=0), model).tokens is None
    with pytest.raises(ValueError):
        MemoryConfig(kv_memory_fraction=2)


def test_the_tuner_stays_where_the_cost_was_measured(
    tiny_engine: HFEngine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from serving.measure.autotune import prepare_tuner
    from serving.policy.workload import TuneConfig

    model = ModelConfig(spec=str(tiny_model_dir))
    cost = CostConfig(batches=(1, 2, 4), contexts=2, min_context=8, steps=3, probe_tokens=64, cache_dir=str(tmp_path))
    args = (tiny_engine, model, "hf", False, cost, MemoryConfig(), TuneConfig())
    tuner = prepare_tuner(*args, None, 30, [10, 12, 20])
    region = tuner.info["step_cost"]["region_tokens"]
    # Contexts 8 and 30 + 20 (the prompts' 95th percentile); at 50 only the two smallest batches fit 64 tokens.
    assert region == int(2 * 50.5)
    assert tuner.budget.tokens == int(2 * region) and "largest measured batch" in tuner.budget.source
    given = prepare_tuner(*args, 5000, 30, [10])
    assert given.budget.tokens == 5000, "a given --token_budget wins"
    off = prepare_tuner(
        tiny_engine,
        model,
        "hf",
        False,
        CostConfig(**{**cost.__dict__, "trust": 0}),
        MemoryConfig(),
        TuneConfig(),
        None,
        30,
        [10],
    )
    assert off.budget.tokens != int(2 * region) and off.budget.tokens is not None
