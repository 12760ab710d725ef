"""What `seqsched bench` writes: the JSON of every run, the markdown table with where the time goes (and, for a
length replay, a note that timing is faithful and text is not), the chart, and the command line."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqsched.config import to_dict
from seqsched.files import atomic_path
from seqsched.tables import table
from serving.bench.rows import BenchResult, Source, median_runs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from seqsched.requests import Request
    from serving.bench import BenchConfig

TABLE_COLUMNS = (
    "strategy",
    "samples_per_s",
    "tokens_per_s",
    "effective_token_ratio",
    "failure_ratio",
    "latency_mean_s",
    "latency_p50_s",
    "latency_p99_s",
    "time_to_half_s",
    "predictor_share",
    "speedup",
    "of_oracle",
    "same_as_vanilla",
)
VS_CB_FCFS_COLUMNS = ("speed_vs_cb_fcfs", "latency_vs_cb_fcfs")
"""Columns added to the table when cb-fcfs ran: samples/s and mean latency as ratios to cb-fcfs's."""
VS_VLLM_FCFS_COLUMNS = ("speed_vs_vllm_fcfs", "latency_vs_vllm_fcfs", "same_as_vllm_fcfs")
"""Columns added when vllm-fcfs ran: ratios to vLLM as users run it, and (vLLM rows) outputs equal to its."""
CONTINUOUS_COLUMNS = (
    "strategy",
    "slots",
    "samples_per_s",
    "latency_mean_s",
    "time_to_half_s",
    "decode_steps",
    "mean_rows",
    "ms_per_step",
    "padding_share",
    "prefills",
    "prefill_s",
)
TIME_COLUMNS = (
    "strategy",
    "total_s",
    "predictor_s",
    "prefill_s",
    "decode_s",
    "other_s",
    "row_steps",
    "generated_tokens",
    "wasted_share",
    "recompute_share",
    "batches",
)


def report_dict(result: BenchResult, config: BenchConfig, requests: Sequence[Request], extra: dict) -> dict:
    """Everything the bench measured, as JSON. A replay leaves out the per-request lengths: they are the replayed
    file's (often a shared dataset's labels, which must not be copied into reports that get committed)."""
    vanilla = next(item for item in result.runs if item.name == "vanilla")
    lengths = [record.num_tokens for record in vanilla.result.records]
    return {
        **extra,
        "complete": result.complete,
        "config": to_dict(config),
        "policy": to_dict(result.policy),
        "paper_policy": to_dict(result.paper_policy) if result.paper_policy is not None else None,
        "tuning": result.tuning,
        "sizing": result.sizing,
        "table": result.rows,
        "time": result.time_rows,
        "simulated": result.sim_rows,
        "ids": [request.id for request in requests],
        "vanilla_lengths": None if extra.get("replay") else lengths,
        "predicted": {
            item.name: item.predicted
            for item in result.runs
            if item.round == 0 and item.predicted is not None and item.strategy.source is not Source.ORACLE
        },
        "runs": [
            {
                **item.result.metrics.row(),
                "strategy": item.name,  # the row (fcr@paper), not the scheduler strategy the metrics name
                "round": item.round,
                "config": to_dict(item.result.config),
                "simulated": item.simulated,
                "fallback": item.fallback,
            }
            for item in result.runs
        ],
        "slots": result.slots,
        "continuous": result.continuous_rows,
        "completion_s": {
            name: [record.completion_s for record in item.result.records]
            for name, item in median_runs(result.runs, [item.name for item in result.runs])[0].items()
        },
    }


def _decision_lines(decisions: dict[str, Any]) -> str:
    lines = []
    for name, values in decisions.items():
        verdict = "vanilla batches (fallback)" if values["fallback_to_vanilla"] else "the tuned schedule"
        lines.append(
            f"- {name}: {verdict}; margin +{values['margin_tokens']} x{1 + values['margin_ratio']:.2f}, bins of "
            f"{values['bin_width']}, vbs {values['vbs']}, recompute batch {values['batch_size']}, token budget "
            f"{values['token_budget']}; simulated {values['simulated_s']:.0f} s vs vanilla "
            f"{values['simulated_vanilla_s']:.0f} s ({values['predicted_gain']:.2f}x, min gain "
            f"{values['min_gain']:.0%}), tuned in {values['tuning_s']:.1f} s"
        )
    return "\n".join(lines)


def _kv_decision_lines(decisions: dict[str, Any]) -> str:
    lines = []
    for name, values in decisions.items():
        chosen, baseline = values["simulated"], values["simulated_baseline"]
        verdict = f"fcfs (no gain of {values['min_gain']:.0%} predicted)" if values["fallback"] else values["policy"]
        lines.append(
            f"- {name}: {verdict}, by {values['objective']}; simulated {chosen['time_s']:.0f} s, mean latency "
            f"{chosen['latency_mean_s']:.0f} s, {chosen['preemptions']:.0f} preemptions (greedy-fcfs: "
            f"{baseline['time_s']:.0f} s, {baseline['latency_mean_s']:.0f} s, {baseline['preemptions']:.0f}); tuned in "
            f"{values['tuning_s']:.1f} s"
        )
    return "\n".join(lines)


def markdown(result: BenchResult, header: str) -> str:
    """The table, the time breakdown, the continuous pool's counters, the tuning decisions and simulated vs
    measured time as markdown."""
    columns = TABLE_COLUMNS
    if any("speed_vs_cb_fcfs" in row for row in result.rows):
        columns = (*columns, *VS_CB_FCFS_COLUMNS)
    if any("speed_vs_vllm_fcfs" in row for row in result.rows):
        columns = (*columns, *VS_VLLM_FCFS_COLUMNS)
    text = (
        f"{header}\n\n{table(result.rows, columns)}\n\nWhere the time goes (seconds of the median round; "
        "wasted_share = 1 - effective token ratio: padding, finished rows and recomputed attempts):\n\n"
        f"{table(result.time_rows, TIME_COLUMNS)}\n"
    )
    if result.continuous_rows:
        text += (
            f"\nContinuous batching (our pool: {result.slots.get('slots')} slots, {result.slots.get('rule')}; vLLM: "
            "its max_num_seqs; every request submitted at t=0; padding_share = the share of attended context that was "
            "left-padding alignment):\n\n"
            f"{table(result.continuous_rows, CONTINUOUS_COLUMNS)}\n"
        )
    fallbacks = {item.name: item.fallback for item in result.runs if item.fallback is not None}
    if fallbacks:
        text += "\nServed FCFS without predicting (no order to choose: every request ran at once):\n\n" + "".join(
            f"- {name}: {reason}\n" for name, reason in fallbacks.items()
        )
    decisions = result.tuning.get("decisions") or {}
    if decisions:
        text += (
            "\nTuned on the served prompts (fcr: mean over draws of true lengths from the predictor's held-out "
            f"errors; fcr-oracle: the true lengths):\n\n{_decision_lines(decisions)}\n"
        )
    kv_decisions = result.tuning.get("kv_decisions") or {}
    if kv_decisions:
        text += (
            "\nContinuous rows tuned on the served prompts (admission rule and order by simulation, mean over draws of "
            f"true lengths from the predictor's held-out errors; FCFS unless a choice wins):\n\n"
            f"{_kv_decision_lines(kv_decisions)}\n"
        )
    if result.sim_rows:
        step_cost = result.tuning.get("step_cost") or {}
        text += (
            f"\nSimulated vs measured (prefill + decode seconds of the median round; cost model: "
            f"{step_cost.get('model', '?')} from {step_cost.get('source', '?')}):\n\n{table(result.sim_rows)}\n"
        )
    return text


def describe_setup(result: BenchResult, replay: dict[str, Any] | None) -> list[str]:
    """Markdown paragraphs on what the rows ran under: a length replay, the budget sizing, the two policies."""
    lines = []
    if replay:
        lines.append(
            f"**Length replay** ({replay['note']}): model `{replay['random_init']}` with random weights "
            f"({replay['parameters'] / 1e9:.2f}B parameters, {replay['dtype']}); lengths from `{replay['lengths']}`; "
            f"prompt token counts from the tokenizer of `{replay['tokenizer']}`. same_as_vanilla compares lengths."
        )
    sizing = result.sizing
    if sizing:
        lines.append(
            f"**Sized to a budget**: {sizing['count']} of {sizing['offered']} prompts, the most whose rows the "
            f"simulator predicted to fit {sizing['allowed_s']:.0f} s ({sizing['seconds_left']:.0f} s left x "
            f"{sizing['safety']:.2f}) with the step cost measured here ({sizing['cost_model']}); simulated seconds "
            f"per row: {sizing['simulated_row_s']}."
        )
    if result.paper_policy is not None:
        paper = result.paper_policy
        tuned = [name for name, values in (result.tuning.get("decisions") or {}).items()]
        lines.append(
            f"**Policies**: rows named `@paper` run the starting (paper's) policy: bins of {paper.bin_width}, VBS "
            f"{paper.vbs}, margin +{paper.margin_tokens} x{1 + paper.margin_ratio:.2f}, recompute batch "
            f"{paper.batch_size}, token budget {paper.token_budget}; their twins run the decision tuned on the served "
            f"prompts ({', '.join(tuned) or 'none'}; listed below)."
        )
    return lines


def plot(result: BenchResult, path: Path, title: str) -> Path | None:
    """Charts: samples/s (with speedup) and effective token ratio per row (static rows blue, our pool orange, vLLM
    purple),
    mean latency and time to half, and the share of requests complete over time (None without matplotlib: the GPU
    machine has none)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["strategy"] for row in result.rows]
    shown, _ = median_runs(result.runs, names)
    palette = {"static": "#4477aa", "pool": "#ee7733", "vllm": "#aa3377"}
    strategies = {name: item.strategy for name, item in shown.items()}
    kinds = {name: "vllm" if row.vllm else "pool" if row.pool else "static" for name, row in strategies.items()}
    colors = [palette[kinds[name]] for name in names]
    figure, ((left, right), (latency, done)) = plt.subplots(2, 2, figsize=(12, 8))
    bars = left.bar(names, [row["samples_per_s"] for row in result.rows], color=colors)
    for bar, row in zip(bars, result.rows, strict=True):
        left.annotate(
            f"{row['speedup']:.2f}x",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    left.set_ylabel("samples/s")
    left.set_title("throughput (speedup vs vanilla)")
    right.bar(names, [row["effective_token_ratio"] for row in result.rows], color="#66aa55")
    right.set_ylim(0, 1)
    right.set_title("effective token ratio")
    positions = range(len(names))
    latency.bar([x - 0.2 for x in positions], [row["latency_mean_s"] for row in result.rows], 0.4, label="mean")
    latency.bar([x + 0.2 for x in positions], [row["time_to_half_s"] for row in result.rows], 0.4, label="half done")
    latency.set_xticks(list(positions), names)
    latency.set_ylabel("seconds from submission (all at t=0)")
    latency.set_title("completion latency: mean, and time until half are done")
    latency.legend(fontsize=8)
    for name, item in shown.items():
        times = sorted(record.completion_s for record in item.result.records)
        share = [(position + 1) / len(times) for position in range(len(times))]
        style = "-" if item.strategy.continuous else "--"
        done.step(times, share, where="post", linestyle=style, label=name)
    done.set_xlabel("seconds")
    done.set_ylabel("share of requests complete")
    done.set_title("requests complete over time (dashed: static batches)")
    done.legend(fontsize=7)
    for axis in (left, right, latency):
        axis.tick_params(axis="x", rotation=30)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as staging:
        figure.savefig(staging, dpi=110, format="png")
    plt.close(figure)
    return path


def replay_info(engine: Any, config: BenchConfig) -> dict[str, Any] | None:
    """What a length replay ran (None for a real model): the note, the random-weight model, the lengths file."""
    if getattr(engine, "text_faithful", True):
        return None
    from seqsched.random_models import REPLAY_NOTE, parameter_count

    model = getattr(engine, "model", None)
    return {
        "note": REPLAY_NOTE,
        "random_init": config.model.random_init,
        "lengths": config.engine.replay or getattr(engine, "source", ""),
        "tokenizer": config.model.spec,
        "parameters": parameter_count(model) if model is not None else 0,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None else "",
    }


def command_line() -> str:
    """The command that started this bench, as one would type it again."""
    if Path(sys.argv[0]).name == "recipe.py":
        return shlex.join(["python", "-m", "seqsched_cli.recipe", *sys.argv[1:]])
    return shlex.join(["seqsched", *sys.argv[1:]])


__all__ = [
    "CONTINUOUS_COLUMNS",
    "TABLE_COLUMNS",
    "TIME_COLUMNS",
    "command_line",
    "describe_setup",
    "markdown",
    "plot",
    "replay_info",
    "report_dict",
]
