"""Measure a model's step cost over batch sizes x context lengths (serving.measure.costmodel's grid), check both fits
leave-one-out, and cache the measurement where `seqsched serve` and `seqsched bench` look for it.

    python benchmarks/step_cost.py --model smollm2 --threads 2 --limit 256 \
        --out benchmarks/step_cost/smollm2-cpu-2threads.json

The grid reaches limit + prompt (default 96 tokens, above the 95th percentile of the bench's prompts with the
chat template: 74 on the first 256 shared validation prompts, 60 on the long-answer set), so `seqsched bench` and
`serve` with the same torch threads reuse it.

Prints every probe (measured vs the chosen model, per-row cost) and the leave-one-out errors of the table and of
the linear formula; the JSON (a copy of the cache file) holds the raw samples, both models and the checks.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from seqsched.tables import table

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--limit", type=int, default=256, help="the response limit served")
    parser.add_argument(
        "--prompt", type=int, default=96, help="a long served prompt in tokens (the grid reaches limit + prompt)"
    )
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    parser.add_argument("--contexts", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--probe_tokens", type=int, default=20480)
    parser.add_argument("--cache_dir", default=None, help="default: $SEQSCHED_CACHE/step-cost")
    parser.add_argument("--out", type=Path, default=None, help="also copy the measurement here")
    args = parser.parse_args()

    import torch

    from seqsched.engines.hf import HFEngine
    from seqsched.model_specs import Device, DType, ModelConfig
    from serving.measure.costmodel import CostConfig, StepSample, load_or_measure, report

    if args.threads:
        torch.set_num_threads(args.threads)
    model = ModelConfig(spec=args.model, device=Device(args.device), dtype=DType(args.dtype))
    engine = HFEngine.from_spec(model)
    config = CostConfig(
        remeasure=True,
        batches=tuple(int(value) for value in args.batches.split(",")),
        contexts=args.contexts,
        steps=args.steps,
        probe_tokens=args.probe_tokens,
        cache_dir=args.cache_dir,
    )
    measured = load_or_measure(engine, model, "hf", config, args.limit + args.prompt, progress=True)
    document = measured.document
    samples = [StepSample(**values) for values in document["samples"]]
    print(table(report(samples, measured.cost)))
    rows = [{"model": name, **values} for name, values in document["leave_one_out"].items()]
    print(table(rows))
    print(f"chosen: {measured.chosen}; measured in {document['measure_s']:.0f} s; cache: {measured.path}")
    if args.out and measured.path:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(measured.path, args.out)
        print(f"copied to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
