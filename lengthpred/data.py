"""Length datasets as plain columns for training and evaluation (a slice of one split, in file order)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from data_tools.schema import load_length_dataset
from seqsched.errors import InputError


class TrainTarget(enum.Enum):
    """Which column a predictor learns."""

    LABEL = "label"
    """The paper's target: the longest sampled response rounded up to a bucket."""
    MAX_LENGTH = "max_length"
    """The longest sampled response, unrounded."""
    GREEDY_LENGTH = "greedy_length"
    """The greedy response's length: what a greedy serving run will generate."""


@dataclass(frozen=True)
class LengthData:
    """Instructions with their length columns."""

    source: str
    ids: list[str]
    prompts: list[str]
    labels: list[int]
    max_lengths: list[int]
    greedy_lengths: list[int] | None = None
    """Present when every record has a greedy sample."""

    def __len__(self) -> int:
        return len(self.prompts)

    def targets(self, target: TrainTarget) -> list[int]:
        """The column a predictor learns or is scored against."""
        if target is TrainTarget.GREEDY_LENGTH:
            if self.greedy_lengths is None:
                raise InputError(self.source, None, "no greedy_length for every record: label with temperature 0")
            return self.greedy_lengths
        return self.labels if target is TrainTarget.LABEL else self.max_lengths

    def by_target(self) -> dict[str, list[int]]:
        """Every target column by name (for evaluation)."""
        columns = {TrainTarget.MAX_LENGTH.value: self.max_lengths, TrainTarget.LABEL.value: self.labels}
        if self.greedy_lengths is not None:
            columns[TrainTarget.GREEDY_LENGTH.value] = self.greedy_lengths
        return columns


def load_length_data(
    path: str | Path, split: str | None = None, start: int = 0, limit: int | None = None
) -> LengthData:
    """Records start..start+limit of one split of a length dataset (file order)."""
    dataset = load_length_dataset(path, split)
    if start < 0 or start > len(dataset):
        raise InputError(path, None, f"start {start} is outside the split's {len(dataset)} records")
    if len(dataset) == 0:
        raise InputError(path, None, f"the split{f' {split!r}' if split else ''} holds no records")
    end = len(dataset) if limit is None else min(len(dataset), start + limit)
    rows = dataset.select(range(start, end))
    labels = [int(value) for value in rows["label"]]
    max_lengths = [int(value) for value in rows["max_length"]] if "max_length" in rows.column_names else labels
    prompts = list(rows["prompt"])
    for offset, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(path, f"record {start + offset}", "empty prompt")
    greedy = list(rows["greedy_length"]) if "greedy_length" in rows.column_names else None
    greedy_lengths = [int(value) for value in greedy] if greedy and all(v is not None for v in greedy) else None
    name = f"{path}" + (f"[{split}]" if split else "") + (f"[{start}:{end}]" if start or limit is not None else "")
    return LengthData(name, [str(value) for value in rows["id"]], prompts, labels, max_lengths, greedy_lengths)
