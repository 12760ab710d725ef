"""Statistics and plots of a length dataset (`seqsched label stats`, and after every label run)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_tools.labels import PAPER_BUCKET, LabelStats, label_stats
from data_tools.schema import LengthDatasetMeta, load_meta
from seqsched.errors import InputError
from seqsched.files import write_json
from seqsched.tables import table

if TYPE_CHECKING:
    from datasets import Dataset

STATS_FILE = "stats.json"
HISTOGRAM_FILE = "label_hist.png"
SCATTER_FILE = "greedy_vs_max.png"


def load_splits(path: str | Path) -> dict[str, Dataset]:
    """Every split of a length dataset folder, by name; clear errors for anything else."""
    from datasets import DatasetDict, load_from_disk

    path = Path(path)
    if not path.is_dir():
        raise InputError(path, None, "no such length dataset folder (make one with `seqsched label`)")
    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise InputError(path, None, f"not a dataset folder saved by seqsched label ({error})") from error
    splits = dict(loaded.items()) if isinstance(loaded, DatasetDict) else {"data": loaded}
    for name, split in splits.items():
        missing = {"id", "max_length", "label", "hit_limit"} - set(split.column_names)
        if missing:
            raise InputError(path, None, f"split {name!r} is not a length dataset: missing columns {sorted(missing)}")
    return splits


def dataset_stats(splits: dict[str, Dataset]) -> dict[str, LabelStats]:
    """Per-split statistics of a length dataset."""
    return {
        name: label_stats(
            split["max_length"],
            split["label"],
            split["hit_limit"],
            split["greedy_length"] if "greedy_length" in split.column_names else None,
        )
        for name, split in splits.items()
        if len(split)
    }


def _stats_rows(stats: dict[str, LabelStats]) -> list[dict[str, Any]]:
    rows = []
    for name, split in stats.items():
        rows.append(
            {
                "split": name,
                "count": split.count,
                "mean": split.max_length.mean,
                "median": split.max_length.median,
                "p90": split.max_length.p90,
                "p99": split.max_length.p99,
                "at_limit_%": 100 * split.at_limit_share,
                "mean_label": split.label.mean,
                "greedy_mean": split.greedy_length.mean if split.greedy_length else None,
                "spread_mean": split.spread.mean if split.spread else None,
                "spread_p90": split.spread.p90 if split.spread else None,
                "max>greedy_%": None if split.max_above_greedy_share is None else 100 * split.max_above_greedy_share,
            }
        )
    return rows


def report_stats(dataset: str | Path, out: str | Path, plots: bool = True) -> dict[str, Any]:
    """Print the stats table of a length dataset; write stats.json (and the PNGs) under out."""
    dataset, out = Path(dataset), Path(out)
    splits = load_splits(dataset)
    stats = dataset_stats(splits)
    meta = load_meta(dataset)
    rows = _stats_rows(stats)
    print("max length over samples per instruction (tokens); spread = max - greedy")
    print(table(rows))
    report: dict[str, Any] = {
        "dataset": str(dataset),
        "meta": None if meta is None else {key: value for key, value in asdict(meta).items() if key != "extra"},
        "splits": {name: asdict(split) for name, split in stats.items()},
        "table": rows,
    }
    if plots:
        report["plots"] = _write_plots(dataset.name, splits, out, meta)
    write_json(out / STATS_FILE, report)
    print(f"stats: {out / STATS_FILE}")
    return report


def _write_plots(name: str, splits: dict[str, Dataset], out: Path, meta: LengthDatasetMeta | None) -> list[str]:
    from data_tools.label_plots import greedy_vs_max, label_histogram

    bucket = meta.bucket if meta else PAPER_BUCKET
    title = f"{name}: {meta.model if meta else 'unknown model'}"
    labels = {split_name: split["label"] for split_name, split in splits.items()}
    written = [str(label_histogram(labels, bucket, out / HISTOGRAM_FILE, title))]
    pairs = {
        split_name: [(g, m) for g, m in zip(split["greedy_length"], split["max_length"], strict=True) if g is not None]
        for split_name, split in splits.items()
        if "greedy_length" in split.column_names
    }
    scatter = greedy_vs_max(pairs, out / SCATTER_FILE, cap=meta.max_new_tokens if meta else None, title=title)
    if scatter is not None:
        written.append(str(scatter))
    for path in written:
        print(f"plot: {path}")
    return written
