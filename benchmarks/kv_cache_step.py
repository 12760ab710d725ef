"""One decode step of SmolLM2 with transformers' DynamicCache (appends by torch.cat: a copy of the whole cache per
step) and with seqsched's in-place cache (seqsched.engines.kv_cache), side by side in one process.

For each (rows, context): prefill `rows` random prompts of `context` tokens, then time `--steps` decode steps
(median); the two caches alternate per shape, so both see the same machine state.

    python benchmarks/kv_cache_step.py --out benchmarks/kv-cache-step
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHAPES = ((1, 200), (16, 200), (64, 200), (96, 300), (128, 300))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/kv-cache-step")
    args = parser.parse_args()

    import torch
    from transformers import DynamicCache

    from seqsched.engines.timing import decode_step_seconds
    from seqsched.model_specs import shared_model
    from seqsched.tables import table

    torch.set_num_threads(args.threads)
    model = shared_model(args.model).model
    rows = []
    for batch, context in SHAPES:
        dynamic = decode_step_seconds(model, batch, context, args.steps, cache=DynamicCache(config=model.config))
        in_place = decode_step_seconds(model, batch, context, args.steps)
        rows.append(
            {
                "rows": batch,
                "context": context,
                "dynamic_cache_s": round(dynamic, 4),
                "in_place_s": round(in_place, 4),
                "speedup": round(dynamic / in_place, 3),
            }
        )
        print(rows[-1], flush=True)
    command = "python benchmarks/kv_cache_step.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items())
    report = {"command": command, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "rows": rows}
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")
    Path(f"{args.out}.md").write_text(f"`{command}`\n\n{table(rows)}\n")


if __name__ == "__main__":
    main()
