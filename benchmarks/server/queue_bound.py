"""How far can shortest-predicted-first cut mean latency under load? The load simulator
(serving.server.simulate_load: the server's own queue and aging, `--places` requests decoding together) over many
Poisson arrival draws, on the true lengths and real predictions of a bench run's prompts: FCFS, SJF by each
predictor, SJF by the true lengths (the bound of any predictor).

The step time is calibrated, not guessed: a flat decode step (CPU decode at a few rows costs about the same at 1 or
8) and a prefill of one step, scaled so that the simulated capacity (every request at t=0, FCFS) equals
`--capacity_rps`, the capacity the live load test measured (benchmarks/server/load_test.py). Loads are fractions of
that capacity, as in the load test.

    python benchmarks/server/queue_bound.py --out benchmarks/server/queue-bound
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from serving.policy.scheduler import Admission, ScheduleConfig
from serving.server.queue import QueueConfig
from serving.server.simulate_load import poisson_arrivals, simulate_load

# (label, bench JSON, strategy whose predictions it holds): the same 256 prompts (validation ids checked equal).
PREDICTORS = (
    ("embedding", "benchmarks/bench/smollm2-cpu-usual-tuned.json", "vllm-sjf"),
    ("probe", "benchmarks/bench/smollm2-cpu-vllm-64seqs.json", "vllm-sjf"),
)


def workload(count: int) -> tuple[list[int], dict[str, list[int]], int]:
    """The first `count` prompts' true lengths (SmolLM2's own greedy ones), each predictor's predictions, the
    limit."""
    base = json.loads(Path(PREDICTORS[0][1]).read_text())
    lengths = [int(value) for value in base["vanilla_lengths"][:count]]
    predicted = {}
    for label, path, strategy in PREDICTORS:
        document = json.loads(Path(path).read_text())
        if document["ids"] != base["ids"]:
            raise SystemExit(f"{path}: not the same prompts as {PREDICTORS[0][1]}")
        predicted[label] = [int(value) for value in document["predicted"][strategy][:count]]
    predicted["oracle"] = list(lengths)
    return lengths, predicted, int(base["config"]["limit"])


def calibrated_step(lengths: list[int], places: int, capacity_rps: float, limit: int) -> float:
    """The flat step time at which every request at t=0, FCFS, is served at capacity_rps."""
    queue = QueueConfig(ScheduleConfig(policy=Admission.FCFS, limit=limit))
    sim = simulate_load([0.0] * len(lengths), lengths, None, places, lambda _: 1.0, queue)
    return len(lengths) / capacity_rps / sim.time_s


def run(
    arrivals: list[float], lengths: list[int], guess: list[int] | None, queue: QueueConfig, places: int, step: float
) -> dict[str, float]:
    """One simulated run's summary."""
    return simulate_load(arrivals, lengths, guess, places, lambda _: step, queue).summary()


def compare(
    lengths: list[int],
    predicted: dict[str, list[int]],
    limit: int,
    step: float,
    args: argparse.Namespace,
    load: float,
    max_wait: float,
) -> list[dict]:
    """FCFS and SJF by each predictor at one load and aging bound, over args.draws arrival draws (the same draws
    for every policy): means over draws, and the spread of the per-draw mean-latency ratio to FCFS."""
    fcfs_queue = QueueConfig(ScheduleConfig(policy=Admission.FCFS, limit=limit), max_wait_s=max_wait)
    sjf_queue = QueueConfig(ScheduleConfig(policy=Admission.SJF, limit=limit), max_wait_s=max_wait)
    runs: dict[str, list[dict[str, float]]] = {"fcfs": []}
    runs.update({f"sjf-{label}": [] for label in predicted})
    for draw in range(args.draws):
        arrivals = poisson_arrivals(len(lengths), load * args.capacity_rps, seed=draw)
        runs["fcfs"].append(run(arrivals, lengths, None, fcfs_queue, args.places, step))
        for label, guess in predicted.items():
            runs[f"sjf-{label}"].append(run(arrivals, lengths, guess, sjf_queue, args.places, step))
    fcfs = {key: statistics.fmean(item[key] for item in runs["fcfs"]) for key in runs["fcfs"][0]}
    rows = []
    for policy, items in runs.items():
        mean = {key: statistics.fmean(item[key] for item in items) for key in items[0]}
        ratios = [
            item["latency_mean_s"] / base["latency_mean_s"] for item, base in zip(items, runs["fcfs"], strict=True)
        ]
        rows.append(
            {
                "max_wait_s": max_wait,
                "load": load,
                "policy": policy,
                "latency_mean_s": round(mean["latency_mean_s"], 2),
                "latency_p99_s": round(mean["latency_p99_s"], 2),
                "ttft_mean_s": round(mean["ttft_mean_s"], 2),
                "throughput_rps": round(mean["throughput_rps"], 3),
                "mean_vs_fcfs": round(mean["latency_mean_s"] / fcfs["latency_mean_s"], 3),
                "p99_vs_fcfs": round(mean["latency_p99_s"] / fcfs["latency_p99_s"], 3),
                "mean_vs_fcfs_draws_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--places", type=int, default=8)
    parser.add_argument("--capacity_rps", type=float, default=0.8423)
    parser.add_argument("--loads", default="0.5,0.9,1.2,1.5")
    parser.add_argument("--max_wait_s", default="30,1e9", help="aging bounds to try (1e9: none)")
    parser.add_argument("--draws", type=int, default=50, help="Poisson arrival draws per load")
    parser.add_argument("--out", default="benchmarks/server/queue-bound")
    args = parser.parse_args()

    lengths, predicted, limit = workload(args.count)
    step = calibrated_step(lengths, args.places, args.capacity_rps, limit)
    rows = []
    for max_wait in (float(value) for value in args.max_wait_s.split(",")):
        for load in (float(value) for value in args.loads.split(",")):
            rows += compare(lengths, predicted, limit, step, args, load, max_wait)
    command = "python benchmarks/server/queue_bound.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items())
    report = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "step_s": step,
        "mean_length": statistics.fmean(lengths),
        "predictors": [{"label": label, "source": path, "strategy": strategy} for label, path, strategy in PREDICTORS],
        "rows": rows,
    }
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")
    header = [
        "max_wait_s",
        "load",
        "policy",
        "latency_mean_s",
        "latency_p99_s",
        "ttft_mean_s",
        "mean_vs_fcfs",
        "p99_vs_fcfs",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[key]) for key in header) + " |" for row in rows]
    text = f"`{command}`\n\nflat step {step * 1000:.1f} ms (calibrated to {args.capacity_rps} req/s at "
    text += f"{args.places} places), "
    text += f"{args.draws} Poisson draws per load, means over draws\n\n" + "\n".join(lines) + "\n"
    Path(f"{args.out}.md").write_text(text)


if __name__ == "__main__":
    main()
