"""Import the paper's published length labels (`{"id", "L_gt", "L_t0.0", ...}` per instruction) as length
records, so that predictors can be trained on the paper's own Vicuna-7B labels."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.labels import bucket_up, max_length
from data_tools.schema import LengthRecord
from seqsched.errors import InputError, SeqschedError
from seqsched.requests import BadRecord, InputFormat, Request, Unreadable, iter_records, read_requests

PAPER_MODEL = "vicuna-7b (paper labels)"
PAPER_MAX_NEW_TOKENS = 512
REFERENCE_KEY = "L_gt"
_SAMPLE_KEY = re.compile(r"^L_t(\d+(?:\.\d+)?)$")


def sample_key(temperature: float) -> str:
    """The paper's field name for a temperature's length: L_t0.0, L_t0.7; more digits when one is not enough
    (L_t0.25), so that two temperatures never share a key."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    short = f"{temperature:.1f}"
    return f"L_t{short}" if float(short) == temperature else f"L_t{temperature!r}"


@dataclass(frozen=True)
class PaperLengths:
    """One instruction's lengths in the paper's file: one sample per temperature, and the reference's."""

    id: str
    lengths: dict[float, int]
    """Sampled length by temperature."""
    reference_length: int | None


def _length(record: Mapping[str, Any], key: str) -> int:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"field {key!r} must be an integer >= 0, got {value!r}")
    return value


def read_paper_lengths(path: str | Path, bad: list[BadRecord] | None = None) -> list[PaperLengths]:
    """The paper's length file (JSON list or JSONL) in file order; InputError names the bad record, or, when a
    `bad` list is given, bad records are skipped and listed there."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "no such length file")
    rows: list[PaperLengths] = []
    seen: set[str] = set()
    temperatures: list[float] | None = None
    for position, record in iter_records(path):
        try:
            if isinstance(record, Unreadable):
                raise ValueError(record.problem)
            if not isinstance(record, Mapping):
                raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
            record_id = record.get("id")
            if isinstance(record_id, bool) or not isinstance(record_id, str | int):
                raise ValueError("missing 'id' (a string or an integer)")
            record_id = str(record_id)
            if record_id in seen:
                raise ValueError(f"duplicate id {record_id!r}")
            keys = {float(match.group(1)): key for key in record if (match := _SAMPLE_KEY.match(key))}
            if not keys:
                raise ValueError("no sampled lengths: expected fields like 'L_t0.0', 'L_t0.7'")
            found = sorted(keys)
            if temperatures is None:
                temperatures = found
            elif found != temperatures:
                raise ValueError(f"temperatures {found} differ from the first record's {temperatures}")
            lengths = {temperature: _length(record, keys[temperature]) for temperature in found}
            reference = _length(record, REFERENCE_KEY) if record.get(REFERENCE_KEY) is not None else None
        except ValueError as error:
            if bad is None:
                raise InputError(path, position, str(error)) from None
            bad.append(BadRecord(str(path), position, str(error)))
            continue
        seen.add(record_id)
        rows.append(PaperLengths(record_id, lengths, reference))
    if not rows:
        raise InputError(path, None, "the length file holds no records")
    return rows


def _missing(ids: Sequence[str], other: set[str], limit: int = 5) -> tuple[int, str]:
    absent = [record_id for record_id in ids if record_id not in other]
    return len(absent), ", ".join(repr(record_id) for record_id in absent[:limit])


def check_ids_match(lengths_path: Path, data_path: Path, length_ids: Sequence[str], data_ids: Sequence[str]) -> None:
    """Stop with a clear error unless every id of the length file is in the instruction file (instructions
    without lengths are fine: a length file may cover part of a file, e.g. its first N instructions)."""
    missing_in_data, examples_data = _missing(length_ids, set(data_ids))
    if missing_in_data:
        raise SeqschedError(
            f"every id of the length file must be in the instruction file: {missing_in_data} ids of {lengths_path} "
            f"are not in {data_path} (e.g. {examples_data}) — pass the matching pair (e.g. "
            "alpaca-train-10k-length.json with alpaca-train-10k.json)"
        )


@dataclass
class PaperImport:
    """The paper's lengths joined with their instructions."""

    records: list[LengthRecord]
    """One per instruction that has lengths, in the instruction file's order."""
    temperatures: list[float]
    uncovered: list[str]
    """Ids of instructions the length file has no lengths for."""
    bad: list[BadRecord]
    """Records of either file that were skipped (skip_bad)."""


def import_paper_labels(
    lengths_path: str | Path,
    data_path: str | Path,
    model: str = PAPER_MODEL,
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS,
    bucket: int = 50,
    data_format: InputFormat = InputFormat.AUTO,
    *,
    skip_bad: bool = False,
) -> PaperImport:
    """Length records from the paper's lengths + instructions (instruction file order), with what was left out."""
    lengths_path, data_path = Path(lengths_path), Path(data_path)
    bad: list[BadRecord] = []
    paper = read_paper_lengths(lengths_path, bad if skip_bad else None)
    read = read_requests(data_path, data_format, skip_bad=skip_bad)
    bad.extend(read.bad)
    requests: list[Request] = read.requests
    check_ids_match(lengths_path, data_path, [row.id for row in paper], [request.id for request in requests])
    by_id = {row.id: row for row in paper}
    records = []
    uncovered = []
    for request in requests:
        row = by_id.get(request.id)
        if row is None:
            uncovered.append(request.id)  # the length file may cover part of the instructions (its first N)
            continue
        temperatures = sorted(row.lengths)
        lengths = [row.lengths[temperature] for temperature in temperatures]
        longest = max_length(lengths)
        records.append(
            LengthRecord(
                id=request.id,
                prompt=request.prompt,
                lengths=lengths,
                temperatures=temperatures,
                max_length=longest,
                label=bucket_up(longest, bucket),
                # The paper's files count the cap as 512 (train) or 514 (validation): >= the cap is at the limit.
                hit_limit=longest >= max_new_tokens,
                model=model,
                greedy_length=row.lengths.get(0.0),
                reference_length=row.reference_length,
            )
        )
    return PaperImport(records, sorted(paper[0].lengths), uncovered, bad)


def paper_records(
    lengths_path: str | Path,
    data_path: str | Path,
    model: str = PAPER_MODEL,
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS,
    bucket: int = 50,
    data_format: InputFormat = InputFormat.AUTO,
) -> list[LengthRecord]:
    """Length records from the paper's lengths + instructions, in the instruction file's order."""
    return import_paper_labels(lengths_path, data_path, model, max_new_tokens, bucket, data_format).records
