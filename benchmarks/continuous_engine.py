"""What the continuous HF engine costs next to static batches, and next to transformers' own continuous batching.

    python benchmarks/continuous_engine.py --model smollm2 --threads 1 --out benchmarks/continuous/engine_smollm2_cpu

Three measurements, each on the same loaded model (greedy):
1. step cost at a full pool: B rows that all run `--steps` steps, as one static batch and as a pool of B slots
   (no admissions after the first): ms per decode step, and the pool's own work (sampling, bookkeeping) per step;
2. slot refill: `--refill` prompts with caps from 4 to --steps tokens through a pool of --slots rows: prefills,
   alignment padding, the pool's own work per step (joins and compaction included);
3. `--prompts` prompts of the shared validation set, `--tokens` new tokens: static `generate`, the pool with one slot
   per prompt, and transformers' `generate_batch` (sdpa; its defaults, then its paged cache sized to the workload),
   each checked token for token against one-request runs.
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from seqsched.tables import table

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "sequence-scheduling" / "alpaca-val-10k.json"


def full_pool(engine, pool_cls, batch: int, steps: int) -> dict:
    """One static batch vs a pool of `batch` slots over the same rows (costmodel's filler prompts)."""
    from serving.measure.costmodel import FILLER

    text = engine.encode(FILLER * 8)
    prompts = [text[row % 7 : row % 7 + 40] for row in range(batch)]
    engine.generate(prompts[:1], 2)  # warm-up
    static = engine.generate(prompts, steps)
    pool = pool_cls(engine, batch)
    timed = pool.submit(prompts, [steps] * batch)
    stats = pool.last_stats
    same = sum(a.token_ids == b.row.token_ids for a, b in zip(static.rows, timed, strict=True))
    return {
        "rows": batch,
        "static_ms_per_step": 1000 * static.decode_s / max(1, static.decode_steps - 1),
        "pool_ms_per_step": 1000 * stats.decode_s / max(1, stats.steps),
        "pool_own_ms_per_step": 1000 * (stats.decode_s + stats.prefill_s - stats.forward_s) / max(1, stats.steps),
        "pool_mean_rows": stats.row_steps / max(1, stats.steps),
        "static_prefill_s": static.prefill_s,
        "pool_prefill_s": stats.prefill_s,
        "same_outputs": f"{same}/{batch}",
    }


def refill(engine, pool_cls, count: int, slots: int, steps: int) -> dict:
    """Many admissions: prompts of varied length with caps from 4 to `steps` through `slots` slots."""
    from serving.measure.costmodel import FILLER

    text = engine.encode(FILLER * 8)
    prompts = [text[index % 11 : index % 11 + 20 + (index * 7) % 41] for index in range(count)]
    caps = [4 + (index * 5) % (steps - 3) for index in range(count)]
    pool = pool_cls(engine, slots)
    started = time.perf_counter()
    timed = pool.submit(prompts, caps)
    wall = time.perf_counter() - started
    stats = pool.last_stats
    alone = [engine.generate([ids], cap).rows[0].token_ids for ids, cap in zip(prompts, caps, strict=True)]
    same = sum(a == b.row.token_ids for a, b in zip(alone, timed, strict=True))
    return {
        "requests": count,
        "slots": slots,
        "wall_s": wall,
        "decode_steps": stats.steps,
        "mean_rows": stats.row_steps / max(1, stats.steps),
        "prefills": stats.prefills,
        "prefill_s": stats.prefill_s,
        "ms_per_step": 1000 * stats.decode_s / max(1, stats.steps),
        "own_ms_per_step": 1000 * (stats.decode_s + stats.prefill_s - stats.forward_s) / max(1, stats.steps),
        "own_share": (stats.decode_s + stats.prefill_s - stats.forward_s) / wall,
        "padding_share": 1 - stats.context_tokens / max(1, stats.padded_context_tokens),
        "same_as_alone": f"{same}/{count}",
    }


def three_ways(engine, pool_cls, path: str, count: int, tokens: int) -> list[dict]:
    """Static generate, the pool, and transformers' generate_batch on the same prompts."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from seqsched.requests import read_requests

    requests = read_requests(str(DATA)).requests[:count]
    prompts = [engine.encode(request.chat()) for request in requests]
    alone = [engine.generate([ids], tokens).rows[0].token_ids for ids in prompts]
    rows = []

    started = time.perf_counter()
    static = engine.generate(prompts, tokens)
    rows.append(("static generate (one batch)", time.perf_counter() - started, [r.token_ids for r in static.rows]))

    pool = pool_cls(engine, count)
    started = time.perf_counter()
    timed = pool.submit(prompts, [tokens] * count)
    elapsed = time.perf_counter() - started
    rows.append((f"seqsched continuous ({count} slots)", elapsed, [item.row.token_ids for item in timed]))

    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    paged = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    config = GenerationConfig(
        max_new_tokens=tokens,
        do_sample=False,
        eos_token_id=sorted(engine.stop_token_ids),
        pad_token_id=engine.pad_token_id,
    )
    # Its defaults size the paged cache to ~90% of free memory: on a CPU that is gigabytes to allocate and to
    # reset every step. Sized to the workload (blocks for every request's prompt + tokens), it is another story.
    pages = count * -(-(max(len(ids) for ids in prompts) + tokens) // 64) + 8
    sized = ContinuousBatchingConfig(
        num_blocks=pages,
        page_size=64,
        max_batch_tokens=4096,
        max_requests_per_batch=count,
        use_async_batching=False,
        use_cuda_graph=False,
    )
    for name, batching in (("defaults", None), (f"cache sized: {pages} pages of 64", sized)):
        started = time.perf_counter()
        outputs = paged.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=batching)
        elapsed = time.perf_counter() - started
        ordered = list(outputs.values())  # generate_batch returns them in input order
        generated = [[t for t in output.generated_tokens if t not in engine.stop_token_ids] for output in ordered]
        rows.append((f"transformers generate_batch ({name})", elapsed, generated))

    base = rows[0][1]
    return [
        {
            "engine": name,
            "wall_s": wall,
            "vs_static": wall / base,
            "generated_tokens": sum(len(ids) for ids in ids_list),
            "same_as_alone": f"{sum(a == b for a, b in zip(alone, ids_list, strict=True))}/{count}",
        }
        for name, wall, ids_list in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batches", default="4,16")
    parser.add_argument("--refill", type=int, default=32)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--skip-generate-batch", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "continuous" / "engine_smollm2_cpu")
    args = parser.parse_args()

    import torch

    from seqsched.engines.hf import HFEngine
    from seqsched.engines.hf_continuous import HFContinuousEngine
    from seqsched.model_specs import resolve_model_path

    torch.set_num_threads(args.threads)
    engine = HFEngine.from_spec(args.model)
    steps = [full_pool(engine, HFContinuousEngine, int(b), args.steps) for b in args.batches.split(",")]
    print(table(steps), flush=True)
    refilled = [refill(engine, HFContinuousEngine, args.refill, args.slots, args.steps)]
    print(table(refilled), flush=True)
    compared = []
    if not args.skip_generate_batch:
        compared = three_ways(engine, HFContinuousEngine, resolve_model_path(args.model), args.prompts, args.tokens)
        print(table(compared), flush=True)
    document = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "load_average_after": os.getloadavg()[0],
        "model": args.model,
        "torch_threads": args.threads,
        "full_pool": steps,
        "refill": refilled,
        "three_ways": compared,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
    text = (
        f"`{document['command']}` ({document['date']}, torch threads {args.threads}, load average after "
        f"{document['load_average_after']:.1f} on {os.cpu_count()} cores)\n\n"
        f"Step cost at a full pool ({args.steps} steps):\n\n{table(steps)}\n\n"
        f"Slot refill:\n\n{table(refilled)}\n\n"
    )
    if compared:
        text += f"{args.prompts} shared validation prompts, {args.tokens} new tokens:\n\n{table(compared)}\n"
    args.out.with_suffix(".md").write_text(text)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
