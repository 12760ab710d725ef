"""`seqsched demo` (what `make demo` runs): the real SmolLM2 answering the built-in instructions offline."""

from __future__ import annotations

import enum
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from seqsched.engines.api import GREEDY
from seqsched.errors import require, require_at_least
from seqsched.files import check_writable, write_json, write_jsonl
from seqsched.model_specs import ModelConfig
from seqsched.requests import Request, read_requests
from seqsched.tables import table
from serving.generate_command import generate_in_order
from serving.scheduler import Strategy
from serving.workload import TuneConfig


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


@dataclass(frozen=True)
class DemoConfig:
    """The demo: the whole pipeline on the project's built-in instructions with the real model, offline."""

    mode: DemoMode = DemoMode.PIPELINE
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: int = 96
    """How many built-in instructions to use (spread over the set, short to long answers)."""
    batch_size: int = 16
    """Vanilla batch size (the paper's 16); in answers mode, the batch size."""
    max_new_tokens: int = 256
    """The response limit of labelling and serving."""
    temperatures: tuple[float, ...] = (0.0,)
    """Labelling temperatures (the paper: 0, 0.3, 0.5, 0.7; greedy alone keeps the demo short on CPU)."""
    validation_fraction: float = 0.25
    """Share of the instructions held out from the predictor's training (its validation metrics)."""
    predictor: str = "embedding"
    """Which cheap predictor the demo trains: embedding (MiniLM + SVR) or sklearn (TF-IDF + ridge)."""
    registered_name: str = "seqsched-demo"
    out_dir: str = "outputs/demo"
    """Everything goes here: lengths, predictor, MLflow store (mlflow.db), batch files, metrics."""
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        require_at_least(self, 1, "prompts", "batch_size", "max_new_tokens", "torch_threads")
        share = self.validation_fraction
        require(0 <= share < 1, "validation_fraction", f"must be in [0, 1), got {share}")
        temperatures = list(self.temperatures)
        require(bool(temperatures) and min(temperatures) >= 0, "temperatures", f"must be >= 0, got {temperatures}")


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


def demo_tuning(config: DemoConfig, lengths: Path) -> TuneConfig:
    """The scheduled run tunes margin, bins and VBS on the served requests' predictions, with the predictor's
    errors on the held-out split and this machine's measured step cost (the paper's GPU table, copied to a CPU
    with a weak predictor, loses to vanilla); vanilla batches serve when the schedule is not predicted to win.
    Nothing held out: the paper's policy as configured."""
    if config.validation_fraction <= 0:
        return TuneConfig()
    return TuneConfig(data=str(lengths), split="validation")


def pipeline_demo(config: DemoConfig) -> int:
    """label -> train -> register @champion -> serve vanilla and scheduled (OpenAI Batch in and out) -> compare."""
    from data_tools.commands import LabelConfig, label
    from lengthpred.commands import TrainConfig, train
    from lengthpred.kinds import PredictorKind
    from seqsched.engines.hf import HFEngine
    from seqsched.engines.selection import set_torch_threads
    from serving.serve_command import ServeConfig, metrics_path, serve

    set_torch_threads(config.torch_threads)
    out = Path(config.out_dir).resolve()
    check_writable(out, "out_dir", folder=True)
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    limit = config.max_new_tokens
    requests = spread_sample(builtin_instructions(), config.prompts)
    instructions = out / "instructions.jsonl"
    write_jsonl(instructions, ({"id": r.id, "prompt": r.prompt} for r in requests))
    began = time.perf_counter()
    print(f"loading {config.model.spec} once for the whole demo ...")
    engine = HFEngine.from_spec(config.model)

    print(
        f"[1/4] label: {len(requests)} built-in instructions, temperatures {list(config.temperatures)}, limit {limit}"
    )
    started = time.perf_counter()
    lengths = out / "lengths"
    shutil.rmtree(lengths, ignore_errors=True)  # a fresh dataset each run (an interrupted one resumes)
    label(
        LabelConfig(
            data=str(instructions),
            out=str(lengths),
            model=config.model,
            temperatures=config.temperatures,
            max_new_tokens=limit,
            batch_size=48,
            validation_fraction=config.validation_fraction,
        ),
        engine=engine,
    )
    _stage("label", started)

    print(f"[2/4] train a {config.predictor} predictor, log it to MLflow, register it as {config.registered_name}")
    started = time.perf_counter()
    train(
        TrainConfig(
            kind=PredictorKind(config.predictor),
            data=str(lengths),
            output_dir=str(out / "predictor"),
            resume=False,
            tracking_uri=tracking_uri,
            experiment="seqsched-demo",
            register_as=config.registered_name,
            alias="champion",
        )
    )
    _stage("train + register", started)

    champion = f"models:/{config.registered_name}@champion"
    tuning = demo_tuning(config, lengths)
    held_out = round(config.validation_fraction * len(requests))
    if tuning.data:
        print(
            f"      the scheduled run is tuned on the served requests, with the predictor's errors on {held_out} "
            "held-out instructions and this machine's step cost (measured once, then cached)"
        )

    print("[3/4] serve the requests (OpenAI Batch JSONL): vanilla, then scheduled with the @champion predictor")
    started = time.perf_counter()
    batch_input = out / "requests.jsonl"
    write_jsonl(batch_input, (batch_line(r, config.model.spec, limit) for r in requests))
    vanilla_out, scheduled_out = out / "vanilla.jsonl", out / "scheduled.jsonl"
    common = {"input": str(batch_input), "limit": limit, "model": config.model}
    serve(
        ServeConfig(**common, strategy=Strategy.VANILLA, batch_size=config.batch_size, output=str(vanilla_out)), engine
    )
    scheduled = ServeConfig(
        **common,
        strategy=Strategy.FCR,
        batch_size=config.batch_size,
        predictor=champion,
        tracking_uri=tracking_uri,
        output=str(scheduled_out),
        tune=tuning,
    )
    serve(scheduled, engine)
    _stage("serve", started)
    print("[4/4] vanilla vs scheduled")
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
    print(
        f"\n{same}/{len(vanilla_text)} scheduled outputs are identical to vanilla's (greedy). The predictor was "
        f"trained on {len(requests) - held_out} of these {len(requests)} instructions ({held_out} held out for "
        "its validation metrics): the demo shows the pipeline; `seqsched bench` measures on unseen prompts."
    )
    summary = write_json(
        out / "comparison.json", {"runs": rows, "same_outputs": same, "wall_s": time.perf_counter() - began}
    )
    print(
        f"\nwhere things are:\n"
        f"  outputs (OpenAI Batch JSONL): {vanilla_out}, {scheduled_out}\n"
        f"  comparison: {summary}\n"
        f"  length dataset: {lengths} (stats and plots: {lengths / 'stats'})\n"
        f"  predictor and its eval plots: {out / 'predictor'}\n"
        f"  MLflow store: {tracking_uri}  (browse: mlflow ui --backend-store-uri {tracking_uri})\n"
        f"demo finished in {time.perf_counter() - began:.0f} s"
    )
    return 0
