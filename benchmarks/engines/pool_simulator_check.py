"""How well the simulators price our continuous pool, replayed on recorded runs (no model run, seconds): the bench's
cb rows (`benchmarks/bench/smollm2-cpu-{usual,long}-gqa.json`: their true lengths, predictions, pool size and the
step-cost grid they used) and the KV-budget pool rows (`benchmarks/kv/usual-128-fast-pool-gqa.json`, the first 128
of the same usual prompts), each simulated by serving.policy.simulate_continuous (the mean prompt, as the bench did)
and by serving.policy.simulate_kv's padded pool (KVEngine.pool: the served prompts), beside the measured time.

    python benchmarks/engines/pool_simulator_check.py --out benchmarks/engines/pool-simulator-check
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

BENCH = "benchmarks/bench/smollm2-cpu-{}-gqa.json"
KV = "benchmarks/kv/usual-128-fast-pool-gqa.json"


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


def bench_rows(workload: str) -> list[dict[str, Any]]:
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
        rows.append(row(f"bench {workload}", name, measured[name]["measured_s"], continuous.time_s, padded.time_s))
    return rows


def kv_rows() -> list[dict[str, Any]]:
    """The pool's rows under a KV budget, on the usual bench run's lengths, predictions and step cost."""
    from serving.policy.kv_tuning import KVPolicy, simulate_policy
    from serving.policy.scheduler import Admission, KVAdmission, ScheduleConfig, Strategy
    from serving.policy.simulate_kv import KVEngine

    bench = json.loads(Path(BENCH.format("usual")).read_text())
    kv = json.loads(Path(KV).read_text())
    count = int(kv["prompts"])
    prompts = prompt_tokens(bench)[:count]
    true = bench["vanilla_lengths"][:count]
    predicted = bench["predicted"]["cb-sjf"][:count]  # the same predictor on the same prompts
    cost = recorded_cost(bench)
    limit = int(bench["config"]["limit"])
    base = ScheduleConfig(strategy=Strategy.VANILLA, limit=limit)
    policies = {
        "cb-greedy": KVPolicy(),
        "cb-reserve-max": KVPolicy(KVAdmission.RESERVE_MAX),
        "cb-predicted": KVPolicy(KVAdmission.PREDICTED, Admission.LPT, 0.15),  # the tuner's choice in that run
    }
    rows = []
    for measured in kv["rows"]:
        policy = policies.get(measured["row"])
        if policy is None:
            continue
        assert policy.name == measured["policy"], (policy.name, measured["policy"])
        model = KVEngine.pool(int(measured["kv_tokens"]), 128)
        padded = simulate_policy(policy, true, predicted, prompts, [limit] * count, model, cost, base)
        label = f"KV budget {measured['budget']}"
        rows.append(row(label, measured["row"], measured["total_s"], measured["simulated_time_s"], padded["time_s"]))
    return rows


def row(run: str, name: str, measured: float, before: float, now: float) -> dict[str, Any]:
    """One table row: simulated times and their errors."""
    return {
        "run": run,
        "row": name,
        "measured_s": round(measured, 1),
        "before_s": round(before, 1),
        "before_error": round(before / measured - 1, 3),
        "padded_s": round(now, 1),
        "padded_error": round(now / measured - 1, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/engines/pool-simulator-check")
    args = parser.parse_args()
    rows = bench_rows("usual") + bench_rows("long") + kv_rows()
    Path(f"{args.out}.json").write_text(json.dumps({"sources": [BENCH, KV], "rows": rows}, indent=1) + "\n")
    lines = [
        "# Our pool, simulated vs measured",
        "",
        f"`python benchmarks/engines/pool_simulator_check.py --out {args.out}`. Before: the bench's continuous "
        "simulator (mean prompt) for the bench rows, the KV simulator's paged model on vLLM's step cost for the "
        "KV-budget rows (as recorded in the run); now: simulate_kv's padded pool on the pool's step cost.",
        "",
        "| run | row | measured | before | now |",
        "|---|---|---|---|---|",
    ]
    for item in rows:
        lines.append(
            f"| {item['run']} | {item['row']} | {item['measured_s']} s | {item['before_s']} s "
            f"({item['before_error']:+.1%}) | {item['padded_s']} s ({item['padded_error']:+.1%}) |"
        )
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
