"""What the GPU replay bench would do with a given step cost, without a GPU: the prompt count its budget sizing
would pick (serving.bench.setup.Sizer, the bench's own code) and the simulated table (speedups, share of the
oracle) at that count. The bench itself measures the step-cost grid on the device and sizes from that; this is for
planning the call and checking the sizing's reasoning.

    .venv/bin/python benchmarks/gpu/estimate.py --fixed-ms 25 --per-row-ms 0.03 --per-context-us 0.5

Reads the recipe (rows, policy, tuning, budget) and outputs/replay-inputs (benchmarks/gpu/prepare.py): prompt
tokens come from the carried tokenizer with Vicuna's conversation format, as on the device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from seqsched.config import config_from_mapping
from seqsched.engines.api import encode_chat
from seqsched.length_files import read_lengths
from seqsched.random_models import random_model
from seqsched.requests import read_requests
from seqsched.tables import table
from seqsched_cli.recipe import apply_override, read_recipe
from serving.bench import BenchConfig
from serving.bench.rows import bench_rows
from serving.bench.setup import Sizer, SizingInputs, simulated_seconds
from serving.measure.autotune import Tuner
from serving.measure.memory import KVBudget
from serving.policy.scheduler import Admission, Strategy
from serving.policy.stepcost import StepCost
from serving.policy.workload import ErrorModel

REPO = Path(__file__).resolve().parents[2]

RECIPE = REPO / "recipes" / "vicuna-7b-replay" / "bench.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixed-ms", type=float, default=25.0, help="per decode step, any batch")
    parser.add_argument("--per-row-ms", type=float, default=0.03, help="per row per step")
    parser.add_argument("--per-context-us", type=float, default=0.5, help="per row per context token per step")
    parser.add_argument("--prefill-token-us", type=float, default=20.0, help="prefill, per prompt token")
    parser.add_argument("--token-budget", type=int, default=None, help="KV tokens per batch (default: none)")
    parser.add_argument("--setup-s", type=float, default=60.0, help="model build + step-cost grid, before sizing")
    parser.add_argument("--inputs", type=Path, default=REPO / "outputs" / "replay-inputs")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, field=value (budget_s=400, strategies=[...])")
    args = parser.parse_args()

    data = read_recipe(RECIPE)
    for text in args.overrides:
        apply_override(data, text)
    config: BenchConfig = config_from_mapping(BenchConfig, data)
    cost = StepCost(
        fixed_s=args.fixed_ms / 1e3,
        per_row_s=args.per_row_ms / 1e3,
        per_context_s=args.per_context_us / 1e6,
        prefill_fixed_s=args.fixed_ms / 1e3,
        prefill_token_s=args.prefill_token_us / 1e6,
    )
    requests = read_requests(args.inputs / "val-prompts.jsonl").requests[config.offset :][: config.count]
    served = read_lengths(args.inputs / "val-lengths.jsonl")
    predictions = read_lengths(config.predictor.removeprefix("oracle:"))
    tune = read_lengths(args.inputs / "tune-lengths.jsonl")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.inputs / "tokenizer")
    preset = random_model(config.model.random_init or "vicuna-7b")
    if preset.chat_template is not None:
        tokenizer.chat_template = preset.chat_template
    inputs = SizingInputs(
        [served[request.id] for request in requests],
        [predictions[request.id] for request in requests],
        [len(encode_chat(tokenizer, request.chat())) for request in requests],
        [min(config.limit, request.max_tokens or config.limit) for request in requests],
    )
    errors = ErrorModel.fit([predictions[key] for key in tune], list(tune.values()))
    tuner = Tuner(cost, KVBudget(args.token_budget, "--token-budget"), config.tune, errors)
    policy = tuner.apply_budget(replace(config.schedule(), strategy=Strategy.FCR, policy=Admission.AUTO))
    rows = bench_rows(config.strategies, config.paper_rows)
    sizer = Sizer(config, rows, tuner, policy, inputs)
    started = time.perf_counter()
    count, policies, sizing = sizer.size(started - args.setup_s)  # as if the setup had taken setup_s
    sizing_s = time.perf_counter() - started
    everything = simulated_seconds(sizer.plans(None), inputs, cost, len(requests))
    seconds = simulated_seconds(sizer.plans(policies), inputs, cost, count)
    table_rows = []
    for name, value in seconds.items():
        oracle = seconds.get("fcr-oracle@paper" if name.endswith("@paper") else "fcr-oracle")
        table_rows.append(
            {
                "row": name,
                "simulated_s": value,
                "samples_per_s": count / value,
                "speedup": seconds["vanilla"] / value,
                "of_oracle": oracle / value if oracle else float("nan"),
            }
        )
    decisions = {} if policies is None else {k.value: v.describe() for k, v in policies.decisions.items()}
    print(
        f"step cost: {cost}\nall {len(requests)} prompts under the paper's policy, simulated seconds per row: "
        f"{ {k: round(v) for k, v in everything.items()} } = {sum(everything.values()):.0f} s\n"
        f"budget {config.budget_s} s, setup ~{args.setup_s:.0f} s: {count} prompts (first sizing "
        f"{sizing.get('first_count', count)}; simulated {sum(seconds.values()):.0f} s of {sizing['allowed_s']:.0f} "
        f"allowed; sizing and tuning took {sizing_s:.0f} s here)\n"
        + "".join(f"{name}: {text}\n" for name, text in decisions.items())
        + f"\n{table(table_rows)}"
    )
    print(
        json.dumps(
            {"mean_true_served": statistics.mean(inputs.true[:count]), "mean_prompt": statistics.mean(inputs.prompts)}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
