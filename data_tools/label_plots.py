"""PNG plots of a length dataset: the label histogram and greedy length against the max over samples."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_histogram(
    labels_by_split: Mapping[str, Sequence[int]], bucket: int, path: str | Path, title: str = ""
) -> Path:
    """Share of instructions per label bucket, one bar series per split."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5))
    series = [(name, labels) for name, labels in labels_by_split.items() if labels]
    width = bucket * 0.8 / max(1, len(series))
    for offset, (name, labels) in enumerate(series):
        counts = Counter(labels)
        xs = sorted(counts)
        shares = [100 * counts[x] / len(labels) for x in xs]
        shift = (offset - (len(series) - 1) / 2) * width
        axes.bar([x + shift for x in xs], shares, width=width, label=f"{name} (n={len(labels)})", alpha=0.85)
    axes.set_xlabel(f"label: max length over samples, rounded up to a multiple of {bucket} (tokens)")
    axes.set_ylabel("share of instructions (%)")
    axes.set_title(title or "label histogram")
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def greedy_vs_max(
    pairs_by_split: Mapping[str, Sequence[tuple[int, int]]], path: str | Path, cap: int | None = None, title: str = ""
) -> Path | None:
    """Scatter of (greedy length, max length) per instruction, with the y = x line; None without greedy samples."""
    series = [(name, pairs) for name, pairs in pairs_by_split.items() if pairs]
    if not series:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 6))
    top = max(max(max(pair) for pair in pairs) for _, pairs in series)
    for name, pairs in series:
        axes.scatter([g for g, _ in pairs], [m for _, m in pairs], s=8, alpha=0.35, label=f"{name} (n={len(pairs)})")
    axes.plot([0, top], [0, top], color="black", linewidth=0.8, label="max = greedy")
    if cap is not None:
        axes.axhline(cap, color="red", linewidth=0.6, linestyle="--", label=f"cap {cap}")
    axes.set_xlabel("greedy length (tokens)")
    axes.set_ylabel("max length over samples (tokens)")
    axes.set_title(title or "greedy vs max length")
    axes.set_xlim(0, top * 1.03)
    axes.set_ylim(0, top * 1.03)
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
