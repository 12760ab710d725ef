"""How much shortest-predicted-first can cut the mean completion latency of a continuous pool, by pool size.

Simulation only (serving.policy.simulate_continuous, pure): the true lengths, predictions and step-cost grid of a
committed `seqsched bench` report, every request submitted at t=0 (an offline batch job), FCFS vs SJF by the
predictor vs SJF by the true lengths, for several pool sizes.

    python benchmarks/continuous/sjf_pool_sweep.py --report benchmarks/bench/smollm2-cpu-probe.json \
        --cost benchmarks/step_cost/smollm2-cpu-2threads.json --out benchmarks/continuous/sjf_pool_sweep
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seqsched.files import write_json, write_text
from seqsched.tables import table
from serving.measure.costmodel import load_cost_file
from serving.policy.admission import make_policy
from serving.policy.scheduler import Admission, ScheduleConfig
from serving.policy.simulate_continuous import simulate_continuous


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, required=True, help="a seqsched bench JSON report")
    parser.add_argument("--cost", type=Path, required=True, help="the step-cost JSON the bench measured")
    parser.add_argument("--slots", default="8,16,32,67,128", help="pool sizes, comma-separated")
    parser.add_argument("--predictions", default="cb-sjf", help="which row's predictions (report['predicted'])")
    parser.add_argument("--prompt_tokens", type=int, default=64, help="prompt tokens per request (chat template incl.)")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()

    report = json.loads(args.report.read_text())
    true_lengths = report["vanilla_lengths"]
    if args.predictions not in report["predicted"]:
        parser.error(f"--predictions {args.predictions}: the report has {sorted(report['predicted'])}")
    predicted = report["predicted"][args.predictions]
    cost = load_cost_file(args.cost)
    cfg = ScheduleConfig(limit=int(report["config"]["limit"]))
    rows = []
    for slots in (int(value) for value in args.slots.split(",")):
        figures = {}
        for name, admission, lengths in (
            ("fcfs", Admission.FCFS, None),
            ("sjf", Admission.SJF, predicted),
            ("sjf-oracle", Admission.SJF, true_lengths),
        ):
            policy = make_policy(admission)
            figures[name] = simulate_continuous(
                true_lengths, lengths, policy, cfg, slots, cost, args.prompt_tokens
            ).summary()
        fcfs = figures["fcfs"]
        rows.append(
            {
                "slots": slots,
                "fcfs_samples_per_s": fcfs["samples_per_s"],
                "fcfs_latency_mean_s": fcfs["latency_mean_s"],
                "sjf_latency_vs_fcfs": figures["sjf"]["latency_mean_s"] / fcfs["latency_mean_s"],
                "sjf_speed_vs_fcfs": figures["sjf"]["samples_per_s"] / fcfs["samples_per_s"],
                "oracle_latency_vs_fcfs": figures["sjf-oracle"]["latency_mean_s"] / fcfs["latency_mean_s"],
                "oracle_speed_vs_fcfs": figures["sjf-oracle"]["samples_per_s"] / fcfs["samples_per_s"],
            }
        )
    measured = [
        {key: row[key] for key in ("strategy", "samples_per_s", "latency_mean_s", "time_to_half_s")}
        for row in report["table"]
        if row["strategy"] in ("cb-fcfs", "cb-sjf", "cb-sjf-oracle")
    ]
    command = " ".join(["python", *sys.argv])
    text = (
        f"# SJF vs FCFS on a continuous pool, by pool size (simulated)\n\n`{command}`\n\n"
        f"{len(true_lengths)} requests, all at t=0, limit {cfg.limit}; true lengths, predictions ({args.predictions}) "
        f"and step cost from `{args.report}` / `{args.cost}`.\n\n{table(rows)}\n\n"
        f"Measured in that bench ({report.get('slots', {}).get('slots', '?')} slots), to check the simulator:\n\n"
        f"{table(measured)}\n"
    )
    write_text(args.out.with_suffix(".md"), text)
    write_json(args.out.with_suffix(".json"), {"command": command, "rows": rows, "measured": measured})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
