"""What `seqsched bench` writes: the JSON of every run, the markdown table with where the time goes, the chart,
and the one-line description of the machine it ran on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqsched.config import to_dict
from seqsched.files import atomic_path
from seqsched.tables import table

if TYPE_CHECKING:
    from collections.abc import Sequence

    from seqsched.requests import Request
    from serving.bench import BenchConfig, BenchResult

TABLE_COLUMNS = (
    "strategy",
    "samples_per_s",
    "tokens_per_s",
    "effective_token_ratio",
    "failure_ratio",
    "latency_p50_s",
    "latency_p99_s",
    "predictor_share",
    "speedup",
    "of_oracle",
    "same_as_vanilla",
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
        "config": to_dict(config),
        "policy": to_dict(result.policy),
        "paper_policy": to_dict(result.paper_policy) if result.paper_policy is not None else None,
        "tuning": result.tuning,
        "setup": result.setup,
        "table": result.rows,
        "time": result.time_rows,
        "ids": [request.id for request in requests],
        "vanilla_lengths": None if extra.get("replay") else lengths,
        "predicted": {
            item.name: item.predicted
            for item in result.runs
            if item.round == 0 and item.predicted is not None and item.strategy.source.value != "oracle"
        },
        "runs": [{"strategy": item.name, "round": item.round, **item.result.metrics.row()} for item in result.runs],
    }


def markdown(result: BenchResult, header: str) -> str:
    """The table and the time breakdown as markdown."""
    return (
        f"{header}\n\n{table(result.rows, TABLE_COLUMNS)}\n\nWhere the time goes (seconds of the median round; "
        "wasted_share = 1 - effective token ratio: padding, finished rows and recomputed attempts):\n\n"
        f"{table(result.time_rows, TIME_COLUMNS)}\n"
    )


def plot(result: BenchResult, path: Path, title: str) -> Path | None:
    """Bar charts: samples/s (with speedup) and effective token ratio per strategy (None without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["strategy"] for row in result.rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bars = left.bar(names, [row["samples_per_s"] for row in result.rows], color="#4477aa")
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
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=30)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as staging:
        figure.savefig(staging, dpi=110, format="png")
    plt.close(figure)
    return path


def machine() -> str:
    """A one-line description of this machine (CPU model and count)."""
    import os
    import platform

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def device_line() -> str:
    """Where the engine ran: the GPU's name, or the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"cpu: {machine()}"


def describe_setup(result: BenchResult, replay: dict[str, Any] | None) -> list[str]:
    """Markdown lines on what the rows ran under: replay, sizing, the two policies."""
    lines = []
    if replay:
        lines.append(
            f"**Length replay** ({replay['note']}): model `{replay['random_init']}` with random weights "
            f"({replay['parameters'] / 1e9:.2f}B parameters, {replay['dtype']}); lengths from `{replay['lengths']}`; "
            f"prompt token counts from the tokenizer of `{replay['tokenizer']}`. same_as_vanilla compares lengths."
        )
    step_cost = result.setup.get("step_cost")
    if step_cost:
        fit = step_cost["fit"]
        lines.append(
            f"**Step cost measured here** (fit over {len(step_cost['samples'])} timed batches): "
            f"{fit['fixed_s'] * 1e3:.2f} ms + {fit['per_row_s'] * 1e3:.4f} ms per row + "
            f"{fit['per_context_s'] * 1e6:.4f} us per row per context token, per decode step; prefill "
            f"{fit['prefill_fixed_s'] * 1e3:.1f} ms + {fit['prefill_token_s'] * 1e6:.2f} us per token."
        )
    sizing = result.setup.get("sizing")
    if sizing:
        lines.append(
            f"**Sized to a budget**: {sizing['count']} of {sizing['offered']} prompts, the most whose rows the "
            f"simulator predicted to fit {sizing['allowed_s']:.0f} s ({sizing['seconds_left']:.0f} s left x "
            f"safety) with the measured step cost; simulated seconds per row: {sizing['simulated_row_s']}."
        )
    if result.paper_policy is not None:
        paper, tuned = result.paper_policy, result.policy
        lines.append(
            f"**Policies**: rows named `@paper` run the paper's policy (bins of {paper.bin_width}, VBS "
            f"{paper.vbs}, margin {paper.margin_tokens}); the others the tuned one (bins of {tuned.bin_width}, "
            f"VBS {tuned.vbs}, recompute batch {tuned.batch_size}, margin +{tuned.margin_tokens} tokens "
            f"x{1 + tuned.margin_ratio:.2f}), tuned on {result.tuning.get('data')}."
        )
    return lines
