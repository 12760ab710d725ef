"""Measure a model's decode step time vs batch size and context, and fit serving.simulate.StepCost to it.

    python benchmarks/step_cost.py --model smollm2 --threads 1 --out benchmarks/serve/step_cost_smollm2_cpu.json

The fitted coefficients are what `seqsched plan --cost FILE` and the tuning functions use; the JSON also
holds every measured point next to the fitted value, so the linear model's fit can be judged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seqsched.tables import table

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", default="1,4,16,32,64,128")
    parser.add_argument("--prompts", default="32,160")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "serve" / "step_cost_smollm2_cpu.json")
    args = parser.parse_args()

    import torch

    from seqsched.engines.hf import HFEngine
    from serving.costmodel import fit, measure, report

    torch.set_num_threads(args.threads)
    engine = HFEngine.from_spec(args.model)
    samples = measure(
        engine,
        batch_sizes=[int(value) for value in args.batches.split(",")],
        prompt_lengths=[int(value) for value in args.prompts.split(",")],
        steps=args.steps,
    )
    cost = fit(samples)
    rows = report(samples, cost)
    print(table(rows))
    print(json.dumps(cost.__dict__))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "command": " ".join(sys.argv),
        "model": args.model,
        "torch_threads": args.threads,
        **cost.__dict__,
        "points": rows,
    }
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
