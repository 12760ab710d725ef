"""`seqsched demo` (what `make demo` runs): the real SmolLM2 answering the built-in instructions offline."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from data_tools.io import Request, read_requests, write_jsonl
from serving.config import parse_config
from serving.engine_api import GREEDY
from serving.generate import generate_in_order
from serving.llm import ModelConfig
from serving.report import table, write_json


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


@dataclass(frozen=True)
class DemoConfig:
    """The demo: built-in instructions served by the real model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: int = 20
    """How many built-in instructions to serve."""
    batch_size: int = 10
    max_new_tokens: int = 256
    out_dir: str = "outputs/demo"


def demo_main(argv: Sequence[str]) -> int:
    """`seqsched demo`."""
    from serving.engine import HFEngine

    config = parse_config(DemoConfig, argv, prog="seqsched demo")
    out_dir = Path(config.out_dir)
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
