"""Why one engine serves faster than the other: the decode step of our HF engine and of vLLM, side by side in one
process, on the same batch sizes x contexts (SmolLM2 fp32, every row generating to the cap, EOS ignored by vLLM and
rarely reached by ours on the filler text), plus each engine's prefill per token.

    python benchmarks/engines/step_cost_both.py --out benchmarks/engines/step-cost

Our engine runs first (vLLM started in this process slows torch's own forwards by ~5%, measured), both with every
core: torch threads = cores for ours, VLLM_CPU_OMP_THREADS_BIND over every core for vLLM.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def main() -> int:
    """Measure both engines and write OUT.json and OUT.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,4,16,32,64,128,256")
    parser.add_argument("--contexts", default="64,160,320")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/engines/step-cost")
    args = parser.parse_args()

    import torch

    from seqsched.engines.config import EngineConfig, EngineKind
    from seqsched.engines.hf import HFEngine
    from seqsched.engines.vllm import VLLMEngine, VLLMStepTimer
    from seqsched.files import write_json
    from seqsched.model_specs import Device, DType, ModelConfig
    from seqsched.tables import table
    from serving.measure.costmodel import machine_name, measure

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = ModelConfig(spec="smollm2", device=Device.CPU, dtype=DType.FLOAT32)
    batches = [int(value) for value in args.batches.split(",")]
    contexts = [int(value) for value in args.contexts.split(",")]
    pairs = [(batch, max(1, context - args.steps // 2)) for context in contexts for batch in batches]
    started = time.perf_counter()
    ours = measure(HFEngine.from_spec(model), steps=args.steps, pairs=pairs)
    vllm = measure(
        VLLMStepTimer(VLLMEngine.from_spec(model, EngineConfig(kind=EngineKind.VLLM))), steps=args.steps, pairs=pairs
    )
    rows = []
    for mine, theirs in zip(ours, vllm, strict=True):
        rows.append(
            {
                "batch": mine.batch,
                "context": round(mine.mean_context),
                "hf_ms_per_step": 1000 * mine.step_s,
                "vllm_ms_per_step": 1000 * theirs.step_s,
                "hf_rows_per_s": mine.batch / mine.step_s,
                "vllm_rows_per_s": theirs.batch / theirs.step_s,
                "vllm_speedup": mine.step_s / theirs.step_s,
                "hf_prefill_ms_per_token": 1000 * mine.prefill_s / (mine.batch * mine.prompt_tokens),
                "vllm_prefill_ms_per_token": 1000 * theirs.prefill_s / (theirs.batch * theirs.prompt_tokens),
            }
        )
    out = Path(args.out)
    command = " ".join(["python", *sys.argv])
    write_json(
        out.with_suffix(".json"),
        {"command": command, "machine": machine_name(), "wall_s": time.perf_counter() - started, "rows": rows},
    )
    text = (
        f"# Decode step: our HF engine vs vLLM\n\n`{command}`\n\n{time.strftime('%Y-%m-%d')}, {machine_name()}, "
        f"SmolLM2-135M fp32, {args.steps} steps per probe\n\n{table(rows)}\n"
    )
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
