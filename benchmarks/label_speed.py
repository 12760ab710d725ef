"""Label builder vs a naive loop: the same instructions and samples, tokens/s for each and the ratio.

The label builder batches its generations (prompt-length groups for the greedy pass, greedy-length groups
for the sampled runs) on an engine that evicts finished rows. The naive loop generates one prompt at a
time with the static engine. Both use the same per-sample seeds, so they draw the same samples.

    python benchmarks/label_speed.py --count 64 --temperatures 0,0.7 --max_new_tokens 128 \
        --out benchmarks/label/speed

`--sides builder,pool,naive` adds the label builder on a continuous pool of --batch_size slots
(`seqsched label --engine.batching continuous`); `vllm` adds it on the real vLLM (`seqsched label --engine.kind
vllm`: each temperature's generations submitted at once; run last, since vLLM started in this process slows torch's
own forwards); `--naive_count K` times the naive loop on the first K instructions only (its tokens/s is steady,
and at limit 256 the full loop takes hours).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from data_tools.sampler import LengthSampler, SamplerConfig, sample_seed
from seqsched.engines.api import Engine, SamplingParams
from seqsched.files import write_json
from seqsched.requests import Request, read_requests
from seqsched.tables import table

REPO = Path(__file__).resolve().parent.parent

DEFAULT_DATA = REPO.parent / "shared" / "data" / "sequence-scheduling" / "alpaca-val-10k.json"


def run_fast(engine: Engine, requests: list[Request], config: SamplerConfig) -> dict:
    """The label builder: batched, grouped, evicting engine."""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    run = LengthSampler(engine, config, checkpoint=None, progress=True).run(requests)
    wall = time.perf_counter() - started
    lengths = {f"{key[0]}|{key[1]}|{key[2]}": sample.length for key, sample in run.samples.items()}
    return {
        "wall_s": wall,
        "generated_tokens": run.generated_tokens,
        "tokens_per_s": run.generated_tokens / wall,
        "batches": run.batches,
        "effective_token_ratio": run.metrics()["effective_token_ratio"],
        "load_avg_before": load,
        "load_avg_after": os.getloadavg()[0],
        "lengths": lengths,
    }


def run_naive(engine: Engine, requests: list[Request], config: SamplerConfig) -> dict:
    """One prompt at a time, static engine, the same seeds."""
    from tqdm import tqdm

    load = os.getloadavg()[0]
    started = time.perf_counter()
    tokens = 0
    lengths: dict[str, int] = {}
    slots = config.sample_slots()
    bar = tqdm(total=len(requests) * len(slots), unit="gen", desc="naive")
    for request in requests:
        prompt_ids = engine.encode(request.chat())
        for temperature, index in slots:
            sampling = SamplingParams(temperature=temperature, top_p=config.top_p)
            seeds = None if sampling.greedy else [sample_seed(config.seed, request.id, temperature, index)]
            row = engine.generate([prompt_ids], config.max_new_tokens, sampling, seeds=seeds).rows[0]
            tokens += row.num_tokens
            lengths[f"{request.id}|{temperature}|{index}"] = row.num_tokens
            bar.update(1)
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - started):.1f}")
    bar.close()
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "load_avg_before": load,
        "load_avg_after": os.getloadavg()[0],
        "lengths": lengths,
    }


def main() -> int:
    """Run both sides and write JSON + markdown results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--count", type=int, default=64, help="the first N instructions")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--temperatures", default="0,0.7")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on shared cores)")
    parser.add_argument("--sides", default="builder,naive", help="any of builder, pool, naive, vllm")
    parser.add_argument("--vllm_max_num_seqs", type=int, default=None, help="vLLM's max_num_seqs (default: its own)")
    parser.add_argument("--naive_count", type=int, default=None, help="naive loop on the first K instructions")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "label" / "speed"))
    args = parser.parse_args()

    import torch

    from seqsched.engines.config import EngineConfig
    from seqsched.engines.hf import HFEngine
    from seqsched.model_specs import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    fast_engine = HFEngine(loaded.model, loaded.tokenizer, EngineConfig(evict_finished=True))
    naive_engine = HFEngine(loaded.model, loaded.tokenizer, EngineConfig(evict_finished=False))
    requests = read_requests(args.data).requests[: args.count]
    temperatures = tuple(float(value) for value in args.temperatures.split(","))
    config = SamplerConfig(
        temperatures=temperatures, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed
    )
    sides = [side.strip() for side in args.sides.split(",")]
    results: dict[str, dict] = {}
    if "builder" in sides:
        results["label builder"] = run_fast(fast_engine, requests, config)
    if "pool" in sides:
        from seqsched.engines.hf_continuous import HFContinuousEngine

        results[f"label builder, continuous pool of {args.batch_size}"] = run_fast(
            HFContinuousEngine(fast_engine, args.batch_size), requests, config
        )
    if "naive" in sides:
        results["naive loop"] = run_naive(naive_engine, requests[: args.naive_count], config)
    if "vllm" in sides:
        from seqsched.engines.config import EngineKind, VLLMConfig
        from seqsched.engines.vllm import VLLMEngine

        vllm_config = EngineConfig(kind=EngineKind.VLLM, vllm=VLLMConfig(max_num_seqs=args.vllm_max_num_seqs))
        vllm_engine = VLLMEngine.from_spec(args.model, vllm_config)
        side = f"label builder, vLLM (max_num_seqs {vllm_engine.max_num_seqs})"
        results[side] = run_fast(vllm_engine, requests, config)
    settings = {
        "data": Path(args.data).name,
        "instructions": len(requests),
        "naive_instructions": len(requests[: args.naive_count]),
        "model": args.model,
        "temperatures": list(temperatures),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    naive = results.get("naive loop")
    pool = next((measured for side, measured in results.items() if "continuous pool" in side), None)
    rows = []
    for side, measured in results.items():
        row = {"side": side, **{key: measured[key] for key in ("wall_s", "generated_tokens", "tokens_per_s")}}
        if pool is not None:
            row["vs_pool_tokens_per_s"] = measured["tokens_per_s"] / pool["tokens_per_s"]
        if naive is not None:
            row["vs_naive_tokens_per_s"] = measured["tokens_per_s"] / naive["tokens_per_s"]
            common = [key for key in measured["lengths"] if key in naive["lengths"]]
            same = sum(measured["lengths"][key] == naive["lengths"][key] for key in common)
            row["same_lengths_as_naive"] = f"{same}/{len(common)}"
        row["load_avg_before_after"] = f"{measured['load_avg_before']:.1f}/{measured['load_avg_after']:.1f}"
        rows.append(row)
    result = {
        "settings": settings,
        "command": " ".join(["python", *sys.argv]),
        "sides": {side: {k: v for k, v in measured.items() if k != "lengths"} for side, measured in results.items()},
        "table": rows,
    }
    out = Path(args.out)
    write_json(out.with_suffix(".json"), result)
    text = table(rows)
    summary = (
        f"# Label builder vs naive loop\n\n`{result['command']}`\n\nsettings: `{json.dumps(settings)}`\n\n{text}\n"
    )
    out.with_suffix(".md").write_text(summary, encoding="utf-8")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
