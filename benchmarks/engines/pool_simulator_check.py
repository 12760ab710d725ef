"""How well the simulators price our continuous pool, replayed on recorded runs (no model run, seconds): the bench's
cb rows (`benchmarks/bench/smollm2-cpu-{usual,long}-gqa.json`: their true lengths, predictions, pool size and the
step-cost grid they used) and the KV-budget pool rows of a kv_bench run (`--kv`, on the first prompts of the same
usual set), each simulated by serving.policy.simulate_continuous (the mean prompt, as the bench did) and by
serving.policy.simulate_kv's padded pool (KVEngine.pool: the served prompts), without and with the cost of the
pool's cache copies (the copy cost per row and column the kv_bench run measured: `pool_copy_slot_s`), beside the
measured time.

    python benchmarks/engines/pool_simulator_check.py --kv benchmarks/kv/usual-128-pool-copies.json \
        --out benchmarks/engines/pool-simulator-check-copies
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

BENCH = "benchmarks/bench/smollm2-cpu-{}-gqa.json"


def prompt_tokens(bench: dict[str, Any]) -> list[int]:
    """The bench prompts' token counts as the engine fed them (SmolLM2's chat template)."""
    from transformers import AutoTokenizer

    from seqsched.engines.api import encode_chat
    from seqsched.model_specs import resolve_model_path
    from seqsched.requests import read_requests

    by_id = {request.id: request for request in read_requests(bench["config"]["input"]).requests}
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2"))
    return [len(encode_chat(tokenizer, by_id[index].chat())) for index in bench["ids"]]


def recorded_cost(bench: dict[str, Any]) -> Any:
    """The step-cost grid the bench run used (as its JSON records it)."""
    from serving.policy.stepcost import cost_from_dict

    grid = bench["slots"]["step_cost"]
    return cost_from_dict({"decode": grid["decode"]["points"], "prefill": grid["prefill"]["points"]})


def bench_rows(workload: str, copy_slot_s: float) -> list[dict[str, Any]]:
    """The cb-fcfs and cb-sjf rows of one workload's bench run."""
    from seqsched.engines.pool_rules import default_admit_min
    from serving.policy.admission import Pass
    from serving.policy.simulate_continuous import simulate_pass
    from serving.policy.simulate_kv import KVEngine, simulate_kv

    bench = json.loads(Path(BENCH.format(workload)).read_text())
    prompts = prompt_tokens(bench)
    true = bench["vanilla_lengths"]
    cost = recorded_cost(bench)
    slots = int(bench["slots"]["slots"])
    caps = [int(bench["config"]["limit"])] * len(true)
    measured = {row["strategy"]: row for row in bench["simulated"]}
    rows = []
    for name in ("cb-fcfs", "cb-sjf"):
        order = None if name == "cb-fcfs" else bench["predicted"][name]
        mean_prompt = round(statistics.fmean(prompts))
        continuous, _ = simulate_pass(
            true, Pass(order, caps), slots, cost, mean_prompt, admit_min=default_admit_min(slots)
        )
        padded = simulate_kv(true, prompts, caps, KVEngine.pool(1 << 40, slots), cost, priorities=order)
        copies = KVEngine.pool(1 << 40, slots, copy_slot_s=copy_slot_s)
        priced = simulate_kv(true, prompts, caps, copies, cost, priorities=order)
        times = (continuous.time_s, padded.time_s, priced.time_s)
        rows.append(row(f"bench {workload}", name, measured[name]["measured_s"], *times))
    return rows


def kv_rows(kv: dict[str, Any]) -> list[dict[str, Any]]:
    """The pool's rows of a kv_bench run, on the usual bench run's lengths, predictions and step cost."""
    from serving.policy.kv_tuning import KVPolicy, simulate_policy
    from serving.policy.scheduler import Admission, KVAdmission, ScheduleConfig, Strategy
    from serving.policy.simulate_kv import KVEngine

    bench = json.loads(Path(BENCH.format("usual")).read_text())
    count = int(kv["prompts"])
    prompts = kv["prompt_tokens"]
    predicted = kv["predicted"]
    cost = recorded_cost(bench)  # the pool's step cost on this machine, as the bench measured it
    limit = int(kv["limit"])
    base = ScheduleConfig(strategy=Strategy.VANILLA, limit=limit)
    copy_slot_s = float(kv["pool_copy_slot_s"])
    policies = {"greedy-fcfs": KVPolicy(), "reserve-max-fcfs": KVPolicy(KVAdmission.RESERVE_MAX)}
    for order in (Admission.LPT, Admission.SJF):
        for margin in (0.0, 0.15, 0.3):
            policy = KVPolicy(KVAdmission.PREDICTED, order, margin)
            policies[policy.name] = policy
    rows = []
    for measured in kv["rows"]:
        if not measured["row"].startswith("cb-"):
            continue
        policy = policies[measured["policy"]]
        true = measured["lengths"]  # the pool's own greedy lengths in this run
        times = []
        for copies in (0.0, copy_slot_s):
            model = KVEngine.pool(int(measured["kv_tokens"]), int(kv["pool_slots"]), copy_slot_s=copies)
            simulated = simulate_policy(policy, true, predicted, prompts, [limit] * count, model, cost, base)
            times.append(simulated["time_s"])
        label = f"KV budget {measured['budget']}"
        rows.append(row(label, measured["row"], measured["total_s"], measured["simulated_time_s"], *times))
    return rows


def row(run: str, name: str, measured: float, before: float, padded: float, priced: float) -> dict[str, Any]:
    """One table row: simulated times and their errors."""
    return {
        "run": run,
        "row": name,
        "measured_s": round(measured, 1),
        "before_s": round(before, 1),
        "before_error": round(before / measured - 1, 3),
        "padded_s": round(padded, 1),
        "padded_error": round(padded / measured - 1, 3),
        "copies_s": round(priced, 1),
        "copies_error": round(priced / measured - 1, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kv", required=True, help="a kv_bench run with pool rows (its JSON)")
    parser.add_argument("--out", default="benchmarks/engines/pool-simulator-check")
    args = parser.parse_args()
    kv = json.loads(Path(args.kv).read_text())
    copy_slot_s = float(kv["pool_copy_slot_s"])
    rows = bench_rows("usual", copy_slot_s) + bench_rows("long", copy_slot_s) + kv_rows(kv)
    sources = [BENCH.format("usual"), BENCH.format("long"), args.kv]
    report = {"sources": sources, "copy_slot_s": copy_slot_s, "rows": rows}
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        "# Our pool, simulated vs measured",
        "",
        f"`python benchmarks/engines/pool_simulator_check.py --kv {args.kv} --out {args.out}`. Before: the bench's "
        "continuous simulator (mean prompt) for the bench rows, the simulated time the KV run recorded for its pool "
        "rows; padded: simulate_kv's padded pool on the pool's step cost; + copies: the same with the pool's cache "
        f"copies priced ({copy_slot_s * 1e9:.1f} ns per row and column, as the KV run measured).",
        "",
        "| run | row | measured | before | padded | + copies |",
        "|---|---|---|---|---|---|",
    ]
    for item in rows:
        lines.append(
            f"| {item['run']} | {item['row']} | {item['measured_s']} s | {item['before_s']} s "
            f"({item['before_error']:+.1%}) | {item['padded_s']} s ({item['padded_error']:+.1%}) | "
            f"{item['copies_s']} s ({item['copies_error']:+.1%}) |"
        )
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
