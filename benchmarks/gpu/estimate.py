"""What the GPU replay bench would do with a given step cost, without a GPU: every row's simulated time on the
first N prompts, the prompt count its budget sizing would pick, and the simulated table (speedups, share of the
oracle) at that count. The bench itself measures the step cost on the device and sizes from that; this is for
planning the call and checking the sizing's reasoning.

    .venv/bin/python benchmarks/gpu/estimate.py --fixed-ms 25 --per-row-ms 0.03 --per-context-us 0.5

Needs outputs/replay-inputs (benchmarks/gpu/prepare.py) and the committed predictions file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from seqsched.length_files import read_lengths  # noqa: E402
from seqsched.tables import table  # noqa: E402
from serving.bench import BenchRow, BenchStrategy, strategy_config  # noqa: E402
from serving.bench_setup import HeldOut, RowPlan, fit_count, simulated_seconds, tune_on  # noqa: E402
from serving.scheduler import PAPER_VBS, ScheduleConfig, Strategy  # noqa: E402
from serving.simulate import StepCost  # noqa: E402

DEFAULT_ROWS = "vanilla,fcr,fcr@paper,fcr-oracle,fcr-oracle@paper"


def parse_rows(text: str) -> list[BenchRow]:
    """Row names (vanilla, seqsch, vbs, fcr, fcr-oracle, with @paper for the paper's policy) as bench rows."""
    rows = []
    for name in text.split(","):
        strategy, _, policy = name.strip().partition("@")
        rows.append(BenchRow(BenchStrategy(strategy), paper=policy == "paper"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixed-ms", type=float, default=25.0, help="per decode step, any batch")
    parser.add_argument("--per-row-ms", type=float, default=0.03, help="per row per step")
    parser.add_argument("--per-context-us", type=float, default=0.5, help="per row per context token per step")
    parser.add_argument("--prefill-token-us", type=float, default=20.0, help="prefill, per prompt token")
    parser.add_argument("--budget-s", type=float, default=400.0)
    parser.add_argument("--setup-s", type=float, default=45.0, help="model build + step-cost probe, before sizing")
    parser.add_argument("--inputs", type=Path, default=REPO / "outputs" / "replay-inputs")
    parser.add_argument("--predictions", type=Path, default=REPO / "benchmarks/gpu/predictions-head-val-0-2000.jsonl")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"the table's rows (default {DEFAULT_ROWS})")
    args = parser.parse_args()
    rows_wanted = parse_rows(args.rows)

    cost = StepCost(
        fixed_s=args.fixed_ms / 1e3,
        per_row_s=args.per_row_ms / 1e3,
        per_context_s=args.per_context_us / 1e6,
        prefill_fixed_s=args.fixed_ms / 1e3,
        prefill_token_s=args.prefill_token_us / 1e6,
    )
    served = read_lengths(args.inputs / "val-lengths.jsonl")
    tune = read_lengths(args.inputs / "tune-lengths.jsonl")
    predictions = read_lengths(args.predictions)
    ids = list(served)
    true = [served[key] for key in ids]
    predicted = [predictions[key] for key in ids]
    prompt_tokens = [60] * len(ids)  # ~52.6 SmolLM2 tokens in Vicuna's format, ~60 LLaMA tokens
    paper = ScheduleConfig(strategy=Strategy.FCR, limit=512, bin_width=50, batch_size=16, vbs=dict(PAPER_VBS))

    def plans(tuned: ScheduleConfig) -> list[RowPlan]:
        return [
            RowPlan(
                row.name,
                strategy_config(row.strategy, paper if row.paper else tuned, 16),
                oracle=row.strategy is BenchStrategy.FCR_ORACLE,
            )
            for row in rows_wanted
        ]

    everything = simulated_seconds(plans(paper), predicted, true, prompt_tokens, cost, len(ids))
    print(
        f"step cost: {cost}\nall {len(ids)} prompts, paper policy, simulated seconds per row: "
        f"{ {k: round(v) for k, v in everything.items()} } = {sum(everything.values()):.0f} s"
    )
    # As the bench does: size under the paper's policy, tune for that size, size again with the tuned policy,
    # tune for the final size.
    held = HeldOut("tune", [predictions[key] for key in tune], list(tune.values()))
    left = args.budget_s - args.setup_s
    first, _ = fit_count(plans(paper), predicted, true, prompt_tokens, cost, left)
    tuned, tuning = tune_on(held, paper, cost, 60, workload=first)
    count, info = fit_count(plans(tuned), predicted, true, prompt_tokens, cost, left - tuning["tuning_s"])
    if count != first:
        tuned, tuning = tune_on(held, paper, cost, 60, workload=count)
    seconds = simulated_seconds(plans(tuned), predicted, true, prompt_tokens, cost, count)
    rows = []
    for name, value in seconds.items():
        oracle = seconds.get("fcr-oracle@paper" if name.endswith("@paper") else "fcr-oracle")
        rows.append(
            {
                "row": name,
                "simulated_s": value,
                "samples_per_s": count / value,
                "speedup": seconds["vanilla"] / value,
                "of_oracle": oracle / value if oracle else float("nan"),
            }
        )
    print(
        f"\nbudget {args.budget_s:.0f} s, setup ~{args.setup_s:.0f} s: {count} prompts (first sizing {first}; "
        f"simulated {sum(seconds.values()):.0f} s of {info['allowed_s']:.0f} allowed)\n"
        f"tuned for runs of {count}: bins of {tuned.bin_width}, margin +{tuned.margin_tokens} x"
        f"{1 + tuned.margin_ratio:.2f}, vbs {tuned.vbs}, recompute batch {tuned.batch_size} "
        f"(tuning took {tuning['tuning_s']:.0f} s here)\n\n{table(rows)}"
    )
    print(json.dumps({"mean_true_served": statistics.mean(true[:count])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
