"""Where predicted lengths pay on a modern engine: vLLM (and our pool) with a KV cache too small for every request,
admission by vLLM's own rule beside reservations by predicted length. One process, the same prompts and predictor for
every row, each row measured alone on its engine.

Budgets are given as room for N full-length sequences: N x (the mean prompt + the limit) tokens, so "8" is a cache
where 8 requests that run to the limit fit at once; `roomy` is vLLM's CPU default here (4 GiB: ~93k tokens, every
request fits). vLLM is started once per budget and scheduler class: vLLM's own v1 scheduler (with counters:
seqsched.engines.vllm_scheduler.CountingScheduler) for vllm-default, seqsched's LengthAwareScheduler for the rest.

Rows (--rows):
- vllm-default: vLLM as users run it: every request at once, arrival order, greedy admission, preempt + recompute.
- vllm-reserve-max: admit only when prompt + max_tokens fits beside the running requests' reservations.
- vllm-predicted-sjf / -lpt: reserve prompt + predicted length (margin from the tuner), shortest / longest first.
- vllm-tuned: the policy serving.policy.kv_tuning picks for this budget from the predictor's held-out errors
  (greedy-fcfs when it predicts no gain), simulated on this machine's measured vLLM step cost.
- vllm-oracle-sjf / -lpt: predicted admission with vLLM's own greedy lengths (from the roomy vllm-default run).
- cb-greedy / cb-reserve-max / cb-predicted: our pool with --engine.kv_budget_tokens and the same rules (its
  --pool_budgets only: it is slower than vLLM here, 0.78x its samples/s at best; 2026-12-05).

    python benchmarks/kv/kv_bench.py --workload usual --out benchmarks/kv/usual

Writes OUT.json (every row, simulated beside measured), OUT.md and OUT.png (throughput and mean latency vs budget).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

VLLM_ROWS = (
    "vllm-default",
    "vllm-reserve-max",
    "vllm-predicted-sjf",
    "vllm-predicted-lpt",
    "vllm-tuned",
    "vllm-oracle-sjf",
    "vllm-oracle-lpt",
)
POOL_ROWS = ("cb-greedy", "cb-reserve-max", "cb-predicted")


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["usual", "long"], default="usual")
    parser.add_argument("--shared", default="../shared/data/sequence-scheduling", help="the shared data folder")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--budgets", default="8,16,32,roomy", help="full-length sequences the KV cache holds")
    parser.add_argument("--rows", default=",".join(VLLM_ROWS))
    parser.add_argument("--pool_budgets", default="", help="budgets of the cb-* rows (e.g. 16)")
    parser.add_argument("--pool_slots", type=int, default=128)
    parser.add_argument("--predictor", default="models:/seqsched-smollm2@champion")
    parser.add_argument("--tracking_uri", default="sqlite:///outputs/bench/mlflow.db")
    parser.add_argument("--held_out", default="outputs/bench/own-held-out", help="own lengths held out (errors)")
    parser.add_argument("--held_out_count", type=int, default=1000)
    parser.add_argument("--objective", choices=["throughput", "latency"], default="throughput")
    parser.add_argument("--out", default="benchmarks/kv/usual")
    return parser.parse_args()


def workload(name: str, count: int, shared: Path) -> list[Any]:
    """The bench's two workloads: the first shared validation prompts, or long-answer ones (paper label >= 250,
    from 2,000 on) — the same selections as recipes/smollm2-cpu/bench*.yaml."""
    from seqsched.requests import read_requests
    from serving.bench import select_by_label

    requests = read_requests(str(shared / "alpaca-val-10k.json")).requests
    if name == "long":
        requests = select_by_label(requests[2000:], str(shared / "alpaca-val-10k-length.json"), 250)
    return requests[:count]


def held_out_errors(predictor: Any, path: str, count: int, limit: int) -> Any:
    """The predictor's errors on held-out own greedy lengths (never the served prompts)."""
    from data_tools.schema import load_length_dataset
    from seqsched.requests import Request
    from serving.policy.workload import ErrorModel

    dataset = load_length_dataset(path)
    records = [dataset[index] for index in range(min(count, len(dataset)))]
    requests = [Request(id=str(record["id"]), prompt=record["prompt"]) for record in records]
    predicted = predictor.predict_requests(requests)
    true = [min(limit, record.get("greedy_length") or record["max_length"]) for record in records]
    return ErrorModel.fit(predicted, true)


def start_vllm(budget_tokens: int | None, scheduler: str) -> Any:
    """vLLM on SmolLM2 (float32, both cores) with this KV cache (None: our CPU default) and scheduler class."""
    from seqsched.engines.config import EngineConfig, EngineKind, VLLMConfig
    from seqsched.engines.vllm import VLLMEngine
    from seqsched.model_specs import Device, DType, ModelConfig

    model = ModelConfig(spec="smollm2", device=Device.CPU, dtype=DType.FLOAT32)
    # vLLM refuses a KV cache smaller than one sequence of max_model_len: 1,024 covers the longest prompt + limit.
    settings = VLLMConfig(max_model_len=1024, kv_cache_tokens=budget_tokens, scheduler_cls=scheduler)
    config = EngineConfig(kind=EngineKind.VLLM, vllm=settings)
    return VLLMEngine.from_spec(model, config)


def measured_row(name: str, budget: str, tokens: int | None, result: Any, seconds: float) -> dict[str, Any]:
    """A table row from a run."""
    metrics = result.metrics
    submissions = result.extra.get("submissions", [])
    return {
        "row": name,
        "budget": budget,
        "kv_tokens": tokens,
        "samples_per_s": metrics.samples_per_s,
        "tokens_per_s": metrics.tokens_per_s,
        "latency_mean_s": metrics.latency_mean_s,
        "latency_p99_s": metrics.latency_p99_s,
        "total_s": metrics.total_s,
        "predictor_s": metrics.predictor_s,
        "preemptions": sum(sub.get("preemptions", 0) for sub in submissions),
        "recomputed_tokens": sum(sub.get("recomputed_tokens", 0) for sub in submissions),
        "max_running": max((sub.get("max_rows", 0) for sub in submissions), default=0),
        "steps": sum(sub.get("steps", 0) for sub in submissions),
        "wall_s": seconds,
    }


def main() -> int:
    """Run every budget's rows and write the report."""
    args = parse_args()
    from seqsched.engines.hf import HFEngine
    from seqsched.engines.hf_continuous import HFContinuousEngine
    from seqsched.engines.vllm import VLLMStepTimer
    from seqsched.engines.vllm_scheduler import COUNTING, LENGTH_AWARE
    from seqsched.files import write_json
    from seqsched.model_specs import Device, DType, ModelConfig
    from serving.measure.autotune import grid_max_context, kv_model, pool_model
    from serving.measure.costmodel import CostConfig, load_or_measure, machine_name
    from serving.policy.kv_tuning import KVPolicy, KVTuneConfig, Objective, decide_kv, simulate_policy
    from serving.policy.scheduler import Admission, KVAdmission, ScheduleConfig, Strategy
    from serving.predictors import resolve_predictor
    from serving.runner import RunOptions, run

    started = time.perf_counter()
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = [row for row in rows if row not in VLLM_ROWS + POOL_ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; choose from {VLLM_ROWS + POOL_ROWS}")
    requests = workload(args.workload, args.count, Path(args.shared))
    model = ModelConfig(spec="smollm2", device=Device.CPU, dtype=DType.FLOAT32)
    hf = HFEngine.from_spec(model)
    prompts = [len(hf.encode(request.chat())) for request in requests]
    full_length = round(statistics.fmean(prompts)) + args.limit
    pool_budgets = {value.strip() for value in args.pool_budgets.split(",") if value.strip()}

    predictor = resolve_predictor(args.predictor, hf, args.tracking_uri)
    assert predictor is not None
    began = time.perf_counter()
    predicted = predictor.predict_requests(requests)
    predictor_s = time.perf_counter() - began
    errors = held_out_errors(predictor, args.held_out, args.held_out_count, args.limit)
    caps = [args.limit] * len(requests)
    base = ScheduleConfig(strategy=Strategy.VANILLA, limit=args.limit)
    objective = Objective(args.objective)
    options = RunOptions(progress=False)
    report: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_name(),
        "platform": platform.platform(),
        "workload": args.workload,
        "prompts": len(requests),
        "limit": args.limit,
        "full_length_tokens": full_length,
        "predictor": args.predictor,
        "predictor_s": predictor_s,
        "pool_slots": args.pool_slots,
        "prompt_tokens": prompts,
        "predicted": [int(value) for value in predicted],
        "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    # vLLM's own greedy lengths (the oracle) and its step cost (the simulator's), from a roomy engine first.
    roomy = start_vllm(None, COUNTING)
    timer = VLLMStepTimer(roomy)
    cost = load_or_measure(timer, model, "vllm", CostConfig(), args.limit + max(prompts), progress=True).cost
    base_run = run(roomy, requests, None, base, options)
    oracle = [record.num_tokens for record in base_run.records]
    report["oracle_from"] = "vllm-default at the roomy budget"
    pool_costs: list[Any] = []

    def pool_cost() -> Any:
        """Our pool's step cost (this machine's cached measurement of the HF engine, measured once if none)."""
        if not pool_costs:
            reach = grid_max_context(args.limit, prompts)
            pool_costs.append(load_or_measure(hf, model, "hf", CostConfig(), reach).cost)
        return pool_costs[0]

    roomy_model = kv_model(roomy)
    assert roomy_model is not None
    # Engines stay alive to the end: a vLLM engine torn down in-process takes the distributed state of the ones
    # started after it along (its finalizer runs whenever the collector gets to it).
    alive: list[Any] = [roomy]
    # A budget of N holds N full-length sequences in whole blocks, plus vLLM's null block.
    block = roomy_model.block_size
    per_sequence = math.ceil(full_length / block) * block
    report.update(block_size=block, sequence_tokens=per_sequence)
    budgets: list[tuple[str, int | None]] = []
    for value in args.budgets.split(","):
        value = value.strip()
        budgets.append((value, None if value == "roomy" else int(value) * per_sequence + block))

    def policy_row(name: str) -> tuple[KVPolicy, list[int] | None]:
        if name == "vllm-default" or name == "cb-greedy":
            return KVPolicy(), None
        if name.endswith("reserve-max"):
            return KVPolicy(KVAdmission.RESERVE_MAX), None
        order = Admission.SJF if name.endswith("sjf") else Admission.LPT
        source = oracle if "oracle" in name else predicted
        return KVPolicy(KVAdmission.PREDICTED, order, tuned.policy.margin_ratio if "predicted" in name else 0.0), source

    for label, tokens in budgets:
        capacity = tokens if tokens is not None else roomy_model.kv_tokens
        kv_engine = replace(roomy_model, kv_tokens=capacity)
        tune = KVTuneConfig(objective=objective)
        tuned = decide_kv(predicted, prompts, caps, errors, kv_engine, cost, base, tune, predictor_s=predictor_s)
        print(f"budget {label} ({capacity} tokens): {tuned.describe()}", flush=True)
        engines: dict[str, Any] = {}
        for name in rows:
            if name.startswith("cb-") and label not in pool_budgets:
                continue
            if name == "vllm-tuned":
                policy, source = tuned.policy, predicted
            else:
                policy, source = policy_row(name)
            cfg = policy.config(base)
            if name.startswith("vllm-"):
                scheduler = COUNTING if name == "vllm-default" else LENGTH_AWARE
                if scheduler not in engines:
                    engines[scheduler] = start_vllm(tokens, scheduler)
                    alive.append(engines[scheduler])
                engine = engines[scheduler]
            else:
                engine = HFContinuousEngine(hf, args.pool_slots, kv_budget_tokens=capacity)
            began = time.perf_counter()
            result = run(engine, requests, source, cfg, options, predictor_s=predictor_s if source is predicted else 0)
            row = measured_row(name, label, tokens, result, time.perf_counter() - began)
            row["policy"] = policy.name
            row["lengths"] = [record.num_tokens for record in result.records]
            row["same_as_oracle"] = sum(r.num_tokens == o for r, o in zip(result.records, oracle, strict=True))
            if name.startswith("vllm-"):
                simulated = simulate_policy(policy, oracle, source, prompts, caps, kv_engine, cost, base)
            else:  # our pool, on its own step cost
                report["pool_copy_slot_s"] = engine.copy_slot_s
                simulated = simulate_policy(
                    policy, oracle, source, prompts, caps, pool_model(engine, capacity), pool_cost(), base
                )
            row["simulated_time_s"] = simulated["time_s"]
            row["simulated_preemptions"] = simulated["preemptions"]
            if name == "vllm-tuned":
                row["decision"] = tuned.as_dict()
            report["rows"].append(row)
            print(
                f"{label:>6} {name:20} {row['samples_per_s']:.3f} samples/s, mean latency "
                f"{row['latency_mean_s']:.1f} s, p99 {row['latency_p99_s']:.1f} s, {row['preemptions']} preemptions, "
                f"max {row['max_running']} running, simulated {row['simulated_time_s']:.0f} s vs "
                f"{row['total_s']:.0f} s",
                flush=True,
            )
            report["wall_s"] = time.perf_counter() - started
            write_json(out.with_suffix(".json"), report)
    write_report(report, out)
    return 0


def write_report(report: dict[str, Any], out: Path) -> None:
    """OUT.md (the table, ratios to vllm-default per budget) and OUT.png (throughput and latency vs budget)."""
    from seqsched.tables import table

    rows = report["rows"]
    default = {row["budget"]: row for row in rows if row["row"] == "vllm-default"}
    for row in rows:
        reference = default.get(row["budget"])
        if reference:
            row["speed_vs_default"] = row["samples_per_s"] / reference["samples_per_s"]
            row["latency_vs_default"] = row["latency_mean_s"] / reference["latency_mean_s"]
    columns = [
        "budget", "row", "policy", "samples_per_s", "speed_vs_default", "latency_mean_s", "latency_vs_default",
        "latency_p99_s", "preemptions", "recomputed_tokens", "max_running", "total_s", "simulated_time_s",
    ]  # fmt: skip
    text = (
        f"# KV-bound admission, {report['workload']} workload\n\n`{report['command']}`\n\n{report['date']}, "
        f"{report['machine']}; {report['prompts']} prompts, limit {report['limit']}, greedy, every request at t=0; "
        f"a budget of N holds N x {report['sequence_tokens']} tokens (mean prompt + limit in whole blocks of "
        f"{report['block_size']}) plus vLLM's null block; predictor "
        f"{report['predictor']} ({report['predictor_s']:.1f} s, counted in the predicted rows).\n\n"
        f"{table(rows, columns)}\n"
    )
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (speed, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    order = list(dict.fromkeys(row["budget"] for row in rows))
    for name in dict.fromkeys(row["row"] for row in rows):
        mine = {row["budget"]: row for row in rows if row["row"] == name}
        xs = [budget for budget in order if budget in mine]
        speed.plot(xs, [mine[b]["samples_per_s"] for b in xs], marker="o", label=name)
        latency.plot(xs, [mine[b]["latency_mean_s"] for b in xs], marker="o", label=name)
    speed.set_xlabel("KV cache (full-length sequences it holds)")
    speed.set_ylabel("samples/s")
    latency.set_xlabel("KV cache (full-length sequences it holds)")
    latency.set_ylabel("mean latency (s, all submitted at t=0)")
    speed.legend(fontsize=7)
    figure.suptitle(f"KV-bound admission, {report['workload']} workload, {report['prompts']} prompts")
    figure.tight_layout()
    figure.savefig(out.with_suffix(".png"), dpi=110)
    json.dumps(report)


if __name__ == "__main__":
    sys.exit(main())
