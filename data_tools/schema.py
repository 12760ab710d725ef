"""The length dataset: one record per instruction, saved as a Hugging Face dataset folder + JSONL.

Folder layout written by `save_length_dataset`:
    DIR/                     a DatasetDict (`datasets.load_from_disk(DIR)`), one split per name
    DIR/<split>.jsonl        the same records as JSONL
    DIR/meta.json            how the labels were made (model, temperatures, limit, bucket, counts)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqsched.errors import InputError
from seqsched.files import atomic_dir

if TYPE_CHECKING:
    from datasets import Dataset

META_FILE = "meta.json"


@dataclass(frozen=True)
class LengthRecord:
    """One labelled instruction."""

    id: str
    prompt: str
    lengths: list[int]
    """Generated tokens of each sample, in the order of `temperatures`."""
    temperatures: list[float]
    """Temperature of each sample (0.0 = greedy)."""
    max_length: int
    """The longest sample."""
    label: int
    """max_length rounded up to a multiple of the bucket: what predictors are trained on."""
    hit_limit: bool
    """True when any sample reached max_new_tokens (its real length may be longer)."""
    model: str
    """The model spec that produced the lengths (or where imported labels came from)."""
    greedy_length: int | None = None
    """Length of the temperature-0 sample, when there is one."""
    reference_length: int | None = None
    """Length of a reference answer, when known (the paper's L_gt)."""
    responses: list[str] | None = None
    """The sampled texts, when kept."""


@dataclass
class LengthDatasetMeta:
    """How a length dataset was made."""

    model: str
    temperatures: list[float]
    max_new_tokens: int
    bucket: int
    source: str
    counts: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _record_dicts(records: Sequence[LengthRecord]) -> list[dict[str, Any]]:
    return [asdict(record) for record in records]


def save_length_dataset(
    out_dir: str | Path,
    splits: Mapping[str, Sequence[LengthRecord]],
    meta: LengthDatasetMeta,
) -> Path:
    """Write the splits as a DatasetDict + JSONL + meta.json, atomically (staged, then renamed)."""
    from datasets import Dataset, DatasetDict

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging:
        dataset = DatasetDict({name: Dataset.from_list(_record_dicts(rows)) for name, rows in splits.items()})
        dataset.save_to_disk(str(staging))
        for name, rows in splits.items():
            with (staging / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
                for row in _record_dicts(rows):
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        meta.counts = {name: len(rows) for name, rows in splits.items()}
        (staging / META_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n", encoding="utf-8")
    return out_dir


def load_length_dataset(path: str | Path, split: str | None = None) -> Dataset:
    """One split of a length dataset (default: the only split, or 'train'); clear errors otherwise."""
    from datasets import DatasetDict, load_from_disk

    path = Path(path)
    if not path.is_dir():
        raise InputError(path, None, "no such length dataset folder (make one with `seqsched label`)")
    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise InputError(path, None, f"not a dataset folder saved by seqsched label ({error})") from error
    except IndexError:  # datasets cannot load back a split saved with no rows
        raise InputError(path, None, "the length dataset holds no records") from None
    if isinstance(loaded, DatasetDict):
        names = list(loaded.keys())
        if split is None:
            split = names[0] if len(names) == 1 else ("train" if "train" in names else None)
        if split not in loaded:
            raise InputError(path, None, f"no split {split!r}; the dataset has {names}")
        dataset = loaded[split]
    else:
        dataset = loaded
    missing = {"id", "prompt", "label"} - set(dataset.column_names)
    if missing:
        raise InputError(path, None, f"not a length dataset: missing columns {sorted(missing)}")
    return dataset


def load_meta(path: str | Path) -> LengthDatasetMeta | None:
    """The dataset's meta.json, if it has one."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        return None
    return LengthDatasetMeta(**json.loads(meta_path.read_text(encoding="utf-8")))
