"""How close can any predictor of SmolLM2's greedy length come? Its own sampled answers as predictors.

On the training instructions that have four samples each (greedy + temperatures 0.3/0.5/0.7,
benchmarks/lengths/smollm2-train-k4-0-999.json), the greedy length is predicted by

- the length of one of SmolLM2's own sampled answers to the same prompt (t=0.3, 0.5, 0.7): a "predictor" that
  generates a whole answer, i.e. perfect perception of one draw of the model's own length distribution;
- the median / mean of the three sampled lengths;
- the probe (MLP heads, layers 16/18/20, the recipe recipes/probe/train-mlp.yaml), out of fold: 5-fold CV over
  all 4,000 training own lengths with the same folds as probe_sweep.py, so no instruction is scored by a head
  that saw it;
- the true greedy length (the oracle).

Each is scored (MAE, Acc-50/100, Kendall tau, under-estimate share) and then scheduled the way `seqsched bench`
schedules its fcr row, in simulation with this machine's measured step cost: the 1,000 instructions are served
in 4 workloads of 250; each workload's schedule is tuned (margin, bin width, VBS; min gain 5%) on draws of true
lengths from that predictor's errors on the other 750 (its held-out errors, as the bench's tuner uses), then
simulated on the workload's true greedy lengths. Vanilla: input order, batch 16. Figures are simulated, not
measured; the cost grid is the one the bench measured (the path is printed).

    python benchmarks/predictors/noise_floor.py --cost ~/.cache/seqsched/models/step-cost/<file>.json \
        --out benchmarks/predictors/noise-floor.json

Needs the feature cache of probe_sweep.py (`probe_sweep.py dump`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from probe_sweep import CACHE, VARIANTS, fit_predict, score, select

SAMPLES = Path("benchmarks/lengths/smollm2-train-k4-0-999.json")
GREEDY = Path("benchmarks/lengths/smollm2-train-greedy-0-3999.json")
LIMIT = 256
WORKLOADS = 4
FOLDS = 5


def probe_out_of_fold(variant_name: str) -> np.ndarray:
    """The probe's 5-fold out-of-fold predictions for the 4,000 cached training prompts (probe_sweep's folds)."""
    train = np.load(CACHE / "train.npz")
    variant = VARIANTS[variant_name]
    x, y = select(train["features"], variant["layers"], variant.get("pooling", "last")), train["greedy"]
    fold_of = np.random.default_rng(0).permutation(len(y)) % FOLDS
    predicted = np.zeros(len(y))
    for fold in range(FOLDS):
        rows = fold_of == fold
        predicted[rows] = fit_predict(x[~rows], y[~rows], x[rows], variant)
    return predicted


def schedule(predicted: list[int], true: list[int], prompts: list[int], cost, budget: int) -> dict[str, float]:
    """The bench's fcr procedure per workload (tuned on the other workloads' errors), summed over workloads."""
    from serving.policy.scheduler import ScheduleConfig, Strategy
    from serving.policy.simulate import simulate
    from serving.policy.workload import ErrorModel, decide, draw_workload, vanilla_config

    start = ScheduleConfig(
        strategy=Strategy.FCR,
        limit=LIMIT,
        bin_width=50,
        batch_size=16,
        vbs={50: 256, 100: 128, 150: 64, 200: 32, 250: 16, 300: 16},
        token_budget=budget,
    )
    count = len(true)
    chunks = np.array_split(np.arange(count), WORKLOADS)
    total = {"fcr_s": 0.0, "vanilla_s": 0.0, "failed": 0, "row_steps": 0, "tokens": 0}
    exact = predicted == true
    for chunk in chunks:
        rows = chunk.tolist()
        others = [row for row in range(count) if row not in set(rows)]
        errors = (
            ErrorModel.exact()
            if exact
            else ErrorModel.fit([predicted[row] for row in others], [true[row] for row in others])
        )
        served = [predicted[row] for row in rows]
        fed = [prompts[row] for row in rows]
        workload = draw_workload(served, fed, errors, LIMIT, draws=2, seed=0)
        decision = decide(workload, start, vanilla_config(start, 16), cost, 0.05)
        actual = [true[row] for row in rows]
        result = simulate(served, actual, decision.config, cost, prompt_tokens=fed)
        vanilla = simulate(served, actual, vanilla_config(start, 16), cost, prompt_tokens=fed)
        total["fcr_s"] += result.total.time_s
        total["vanilla_s"] += vanilla.total.time_s
        total["failed"] += len(result.failed)
        total["row_steps"] += result.total.row_steps
        total["tokens"] += sum(min(value, LIMIT) for value in actual)
    return {
        "fcr_samples_per_s": count / total["fcr_s"],
        "vanilla_samples_per_s": count / total["vanilla_s"],
        "speedup": total["vanilla_s"] / total["fcr_s"],
        "failure_ratio": total["failed"] / count,
        "effective_token_ratio": total["tokens"] / total["row_steps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cost", required=True, help="a step-cost grid measured by seqsched bench (JSON)")
    parser.add_argument("--variant", default="current-mlp", help="the probe variant of probe_sweep.py")
    parser.add_argument("--out", default="benchmarks/predictors/noise-floor.json")
    args = parser.parse_args()

    from serving.measure.costmodel import load_cost_file

    started = time.perf_counter()
    greedy_ids = [row["id"] for row in json.loads(GREEDY.read_text())]
    train = np.load(CACHE / "train.npz")
    if len(greedy_ids) != len(train["greedy"]):
        raise SystemExit(f"{CACHE / 'train.npz'}: {len(train['greedy'])} rows, {GREEDY}: {len(greedy_ids)}")
    position = {key: row for row, key in enumerate(greedy_ids)}
    samples = json.loads(SAMPLES.read_text())
    rows = [position[row["id"]] for row in samples]
    true = [int(row["L_t0.0"]) for row in samples]
    if true != [int(train["greedy"][row]) for row in rows]:
        raise SystemExit(f"{SAMPLES}: greedy lengths differ from the cached training lengths")
    prompts = [int(train["prompt_tokens"][row]) for row in rows]
    probe = probe_out_of_fold(args.variant)
    probe_s = time.perf_counter() - started

    sampled = {t: [int(row[f"L_t{t}"]) for row in samples] for t in ("0.3", "0.5", "0.7")}
    predictors: dict[str, list[int]] = {f"one own sample, t={t}": values for t, values in sampled.items()}
    three = list(zip(*sampled.values(), strict=True))
    predictors["median of the 3 own samples"] = [round(statistics.median(values)) for values in three]
    predictors["mean of the 3 own samples"] = [round(statistics.fmean(values)) for values in three]
    predictors[f"probe ({args.variant}), out of fold"] = [round(float(probe[row])) for row in rows]
    predictors["true greedy length (oracle)"] = list(true)

    cost = load_cost_file(args.cost)
    budget = 26368  # the bench's token budget on this machine (2x the largest measured batch x context)
    results = []
    for name, predicted in predictors.items():
        metrics = score(np.array(predicted, dtype=float), np.array(true, dtype=float))
        simulated = schedule(predicted, true, prompts, cost, budget)
        results.append({"predictor": name, **metrics, **{k: round(v, 4) for k, v in simulated.items()}})
    oracle = results[-1]["fcr_samples_per_s"]
    for record in results:
        record["of_oracle"] = round(record["fcr_samples_per_s"] / oracle, 4)
    report = {
        "command": "python benchmarks/predictors/noise_floor.py "
        + " ".join(f"--{key} {value}" for key, value in vars(args).items()),
        "instructions": len(true),
        "at_limit": round(sum(value >= LIMIT for value in true) / len(true), 4),
        "cost": str(args.cost),
        "probe_cv_s": round(probe_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    columns = [
        "predictor",
        "mae",
        "acc_50",
        "acc_100",
        "kendall_tau",
        "under_rate",
        "speedup",
        "of_oracle",
        "failure_ratio",
        "effective_token_ratio",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for record in results:
        print("| " + " | ".join(str(record.get(column, "")) for column in columns) + " |")


if __name__ == "__main__":
    main()
