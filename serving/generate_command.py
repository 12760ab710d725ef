"""`seqsched generate`: run the engine over a file of prompts in input order, fixed-size batches."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from seqsched.engines.api import BatchOutput, Engine, RowOutput, SamplingParams
from seqsched.errors import require, require_at_least
from seqsched.files import check_writable, write_json, write_jsonl
from seqsched.model_specs import ModelConfig
from seqsched.requests import InputFormat, Request, read_requests
from seqsched.tables import table


@dataclass(frozen=True)
class GenerateConfig:
    """Run the engine on a file of prompts (vanilla batches in input order)."""

    input: str = ""
    """Prompts: ShareGPT/Alpaca JSON(L), plain JSONL {id, prompt}, OpenAI Batch JSONL or a dataset folder."""
    output: str = "outputs/generate.jsonl"
    """Where the answers go (JSONL, one line per request, input order); metrics go beside it as .metrics.json."""
    input_format: InputFormat = InputFormat.AUTO
    skip_bad: bool = False
    """Skip records that cannot be read (and list them) instead of stopping at the first."""
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 16
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    evict_finished: bool = False
    """Drop finished rows from the KV cache (faster; the paper's engine keeps them)."""

    def __post_init__(self) -> None:
        require_at_least(self, 1, "batch_size", "max_new_tokens")
        require_at_least(self, 0, "temperature")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass
class GenerationRun:
    """Outputs in input order and the run's totals."""

    requests: list[Request]
    rows: list[RowOutput]
    batches: list[BatchOutput]
    wall_s: float

    def metrics(self) -> dict[str, float]:
        """Throughput and cost totals."""
        generated = sum(row.num_tokens for row in self.rows)
        row_steps = sum(batch.row_steps for batch in self.batches)
        return {
            "requests": len(self.rows),
            "batches": len(self.batches),
            "wall_s": self.wall_s,
            "samples_per_s": len(self.rows) / self.wall_s if self.wall_s else 0.0,
            "generated_tokens": generated,
            "tokens_per_s": generated / self.wall_s if self.wall_s else 0.0,
            "effective_token_ratio": generated / row_steps if row_steps else 0.0,
            "prefill_s": sum(batch.prefill_s for batch in self.batches),
            "decode_s": sum(batch.decode_s for batch in self.batches),
        }


def generate_in_order(
    engine: Engine,
    requests: Sequence[Request],
    batch_size: int,
    max_new_tokens: int,
    sampling: SamplingParams,
    seed: int = 0,
    progress: bool = True,
) -> GenerationRun:
    """Generate every request in input order, batch_size at a time (the paper's vanilla batching)."""
    from tqdm import tqdm

    started = time.perf_counter()
    rows: list[RowOutput] = []
    batches: list[BatchOutput] = []
    bar = tqdm(total=len(requests), unit="req", disable=not progress, desc="generate")
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        prompt_ids = [engine.encode(request.chat()) for request in chunk]
        seeds = [seed + start + offset for offset in range(len(chunk))]
        output = engine.generate(prompt_ids, max_new_tokens, sampling, seeds=seeds)
        rows.extend(output.rows)
        batches.append(output)
        bar.update(len(chunk))
        elapsed = time.perf_counter() - started
        bar.set_postfix(tok_s=f"{sum(row.num_tokens for row in rows) / elapsed:.1f}")
    bar.close()
    return GenerationRun(list(requests), rows, batches, time.perf_counter() - started)


def generate(config: GenerateConfig) -> GenerationRun:
    """`seqsched generate`: the engine over a file of prompts, outputs in input order."""
    from seqsched.engines.hf import EngineConfig, HFEngine

    if not config.input:
        from seqsched.errors import SeqschedError

        raise SeqschedError("--input is required (a file of prompts)")
    metrics_file = str(config.output).removesuffix(".jsonl") + ".metrics.json"
    for target in (config.output, metrics_file):  # before the model loads
        check_writable(target, "output")
    read = read_requests(config.input, config.input_format, skip_bad=config.skip_bad)
    for bad in read.bad:
        print(f"skipped {bad}")
    engine = HFEngine.from_spec(config.model, EngineConfig(evict_finished=config.evict_finished))
    sampling = SamplingParams(temperature=config.temperature, top_p=config.top_p)
    run = generate_in_order(engine, read.requests, config.batch_size, config.max_new_tokens, sampling, config.seed)
    write_jsonl(
        config.output,
        (
            {
                "id": request.id,
                "prompt": request.prompt,
                "output": row.text,
                "num_tokens": row.num_tokens,
                "finish_reason": row.finish_reason.value,
            }
            for request, row in zip(run.requests, run.rows, strict=True)
        ),
    )
    metrics = run.metrics() | {"skipped_records": len(read.bad)}
    metrics_path = write_json(metrics_file, metrics)
    print(table([metrics], ["requests", "samples_per_s", "tokens_per_s", "effective_token_ratio", "wall_s"]))
    print(f"outputs: {config.output}\nmetrics: {metrics_path}")
    return run
