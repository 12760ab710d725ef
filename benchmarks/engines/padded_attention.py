"""One decode step of SmolLM2 over a left-padded cache with transformers' `sdpa` attention (which copies the grouped
key/value heads once per query group whenever a mask is given) and with seqsched's `seqsched_sdpa` (the mask and
the grouped heads handed to SDPA together: seqsched.engines.attention), side by side in one process.

For each (rows, columns, padding share): prefill `rows` random prompts of `columns` tokens, mask the first
`padding share` of the columns out (left padding, as our continuous pool and any batch of unequal prompts run),
then time `--steps` decode steps (median); the two attentions alternate per shape, so both see the same machine.

    python benchmarks/engines/padded_attention.py --out benchmarks/engines/padded-attention
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHAPES = ((16, 200, 0.0), (16, 200, 0.4), (72, 150, 0.0), (72, 150, 0.4), (72, 350, 0.0), (72, 350, 0.4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/engines/padded-attention")
    args = parser.parse_args()

    import torch

    from seqsched.engines.attention import ATTENTION
    from seqsched.engines.timing import decode_step_seconds
    from seqsched.model_specs import shared_model
    from seqsched.tables import table

    torch.set_num_threads(args.threads)
    model = shared_model(args.model).model
    rows = []
    for batch, columns, padding in SHAPES:
        times = {}
        for attention in ("sdpa", ATTENTION):
            model.set_attn_implementation(attention)
            times[attention] = decode_step_seconds(model, batch, columns, args.steps, padding=padding)
        rows.append(
            {
                "rows": batch,
                "columns": columns,
                "padding_share": padding,
                "sdpa_s": round(times["sdpa"], 4),
                "seqsched_sdpa_s": round(times[ATTENTION], 4),
                "speedup": round(times["sdpa"] / times[ATTENTION], 3),
            }
        )
        print(rows[-1], flush=True)
    model.set_attn_implementation(ATTENTION)
    command = "python benchmarks/engines/padded_attention.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items())
    report = {"command": command, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "rows": rows}
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")
    Path(f"{args.out}.md").write_text(f"`{command}`\n\n{table(rows)}\n")


if __name__ == "__main__":
    main()
