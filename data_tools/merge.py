"""Several length datasets as one (a training set from committed lengths plus freshly labelled ones)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from data_tools.schema import LengthDatasetMeta, LengthRecord, load_length_dataset, load_meta, save_length_dataset
from seqsched.errors import InputError


def merge_length_datasets(sources: Sequence[str | Path], out: str | Path, split: str = "train") -> Path:
    """One split of each source (its only or `train` split), concatenated in the order given, written to out;
    an id present twice is an error naming the second source."""
    names = {item.name for item in fields(LengthRecord)}
    records: list[LengthRecord] = []
    seen: dict[str, str] = {}
    metas: list[LengthDatasetMeta] = []
    for source in sources:
        for row in load_length_dataset(source):
            if row["id"] in seen:
                raise InputError(source, None, f"id {row['id']!r} is also in {seen[row['id']]}")
            seen[row["id"]] = str(source)
            records.append(LengthRecord(**{key: value for key, value in row.items() if key in names}))
        meta = load_meta(source)
        if meta is not None:
            metas.append(meta)
    if not records:
        raise InputError(out, None, "no records to merge")
    first = metas[0] if metas else None
    meta = LengthDatasetMeta(
        model=first.model if first else records[0].model,
        temperatures=first.temperatures if first else records[0].temperatures,
        max_new_tokens=max((item.max_new_tokens for item in metas), default=0),
        bucket=first.bucket if first else 50,
        source=" + ".join(str(source) for source in sources),
        extra={"merged": [str(source) for source in sources]},
    )
    return save_length_dataset(out, {split: records}, meta)
