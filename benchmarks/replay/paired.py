"""Real model vs its length replay, paired: the same strategy runs on both engines back to back (alternating which
goes first), so a busy machine's slow minutes hit both alike; wall time and this process's CPU time per run.

    .venv/bin/python benchmarks/replay/paired.py --count 32 --limit 64 --threads 1 --out outputs/replay-check/paired

The real engine is SmolLM2-135M-Instruct; the replay engine is SmolLM2's architecture with random weights,
replaying the real vanilla run's own greedy lengths. Same prompts, same predictions (a lengths file), the paper's
policy. Writes OUT.json and OUT.md (per strategy: samples/s of each, replay/real, CPU seconds of each).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from seqsched.files import write_json, write_text
from seqsched.tables import table

REPO = Path(__file__).resolve().parents[2]

SHARED = REPO.parent / "shared" / "data" / "sequence-scheduling"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=SHARED / "alpaca-val-10k.json")
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--strategies", default="vanilla,seqsch,vbs,fcr,fcr-oracle")
    parser.add_argument("--predictions", type=Path, default=REPO / "benchmarks/gpu/predictions-head-val-0-2000.jsonl")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "replay-check" / "paired")
    args = parser.parse_args()

    import torch

    from seqsched.engines.hf import HFEngine
    from seqsched.engines.replay import ReplayEngine
    from seqsched.model_specs import Device, ModelConfig
    from seqsched.requests import read_requests
    from serving.bench import BenchStrategy, strategy_config
    from serving.policy.scheduler import ScheduleConfig, Strategy
    from serving.predictors import read_oracle
    from serving.runner import run

    torch.set_num_threads(args.threads)
    requests = read_requests(args.input).requests[: args.count]
    policy = ScheduleConfig(strategy=Strategy.FCR, limit=args.limit)
    predicted = read_oracle(args.predictions).predict_requests(requests)
    real = HFEngine.from_spec(ModelConfig(spec="smollm2", device=Device.CPU))
    vanilla = run(real, requests, None, strategy_config(BenchStrategy.VANILLA, policy, 16))
    lengths = {record.id: record.num_tokens for record in vanilla.records}
    replay = ReplayEngine.for_requests(
        HFEngine.from_spec(ModelConfig(spec="smollm2", device=Device.CPU, random_init="smollm2")), requests, lengths
    )
    engines = {"real": real, "replay": replay}
    runs: list[dict] = []
    for index in range(args.rounds):
        for name in args.strategies.split(","):
            strategy = BenchStrategy(name.strip())
            cfg = strategy_config(strategy, policy, 16)
            guesses = None if strategy is BenchStrategy.VANILLA else predicted
            if strategy is BenchStrategy.FCR_ORACLE:
                guesses = [lengths[request.id] for request in requests]
            order = ["real", "replay"] if (index + len(runs) // 2) % 2 == 0 else ["replay", "real"]
            for which in order:
                cpu = time.process_time()
                result = run(engines[which], requests, guesses, cfg)
                runs.append(
                    {
                        "round": index,
                        "strategy": strategy.value,
                        "engine": which,
                        "samples_per_s": result.metrics.samples_per_s,
                        "total_s": result.metrics.total_s,
                        "cpu_s": time.process_time() - cpu,
                        "row_steps": result.metrics.row_steps,
                        "batches": result.metrics.batches,
                        "lengths": [record.num_tokens for record in result.records],
                    }
                )
                print(f"round {index + 1} {strategy.value} {which}: {runs[-1]['total_s']:.1f} s", flush=True)
    rows = []
    for name in dict.fromkeys(item["strategy"] for item in runs):
        mine = {
            which: [item for item in runs if item["strategy"] == name and item["engine"] == which] for which in engines
        }
        real_sps = statistics.median(item["samples_per_s"] for item in mine["real"])
        replay_sps = statistics.median(item["samples_per_s"] for item in mine["replay"])
        rows.append(
            {
                "strategy": name,
                "real_samples_per_s": real_sps,
                "replay_samples_per_s": replay_sps,
                "replay_over_real": replay_sps / real_sps,
                "real_cpu_s": statistics.median(item["cpu_s"] for item in mine["real"]),
                "replay_cpu_s": statistics.median(item["cpu_s"] for item in mine["replay"]),
                "same_work": all(
                    a["row_steps"] == b["row_steps"] and a["batches"] == b["batches"] and a["lengths"] == b["lengths"]
                    for a, b in zip(mine["real"], mine["replay"], strict=True)
                ),
            }
        )
    header = (
        f"`{' '.join(sys.argv)}`\n\n{time.strftime('%Y-%m-%d')}, {args.count} prompts, limit {args.limit}, "
        f"{args.threads} thread(s), {args.rounds} round(s) (median), paper's policy; real SmolLM2-135M-Instruct vs "
        "SmolLM2's shape with random weights replaying the real vanilla lengths"
    )
    text = f"{header}\n\n{table(rows)}\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), {"rows": rows, "runs": runs, "argv": sys.argv})
    write_text(args.out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
