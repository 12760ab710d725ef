"""Response lengths by request id, from small files (no dataset library): what an oracle predictor, a replay
engine and the bench's tuning read.

Formats: JSONL lines (or a JSON list of records) {"id", one of "true"|"length"|"num_tokens"|"predicted",
optional "prompt"} or OpenAI Batch output lines (`custom_id`, `response.body.usage.completion_tokens`); or a
`seqsched bench` report (OUT.json: its `ids` and `vanilla_lengths`, the lengths the served model produced).
Records are decoded one by one (seqsched.requests.iter_records): a line that is not UTF-8 or not JSON is an error
naming file:line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqsched.errors import InputError
from seqsched.requests import Unreadable, iter_records

LENGTH_KEYS = ("true", "length", "num_tokens", "predicted")
"""Fields a JSONL line may give the length in (the first one present wins)."""


@dataclass(frozen=True)
class LengthRecord:
    """One request's length, and its prompt when the file has one."""

    id: str
    length: int
    prompt: str | None = None


def _line_length(record: Mapping[str, Any]) -> Any:
    for key in LENGTH_KEYS:
        if key in record:
            return record[key]
    usage = ((record.get("response") or {}).get("body") or {}).get("usage")  # an OpenAI Batch output line
    if isinstance(usage, Mapping) and "completion_tokens" in usage:
        return usage["completion_tokens"]
    raise KeyError


def _check_length(path: Path, where: int | str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(path, where, f"the length must be an integer >= 0, got {value!r}")
    return value


def _bench_report(path: Path) -> list[LengthRecord]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(path, error.lineno, f"invalid JSON ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise InputError(path, None, f"not UTF-8 text (byte {error.object[error.start]:#x})") from None
    if not isinstance(report, Mapping) or "vanilla_lengths" not in report or "ids" not in report:
        raise InputError(
            path, None, "a JSON object must be a `seqsched bench` report (ids, vanilla_lengths); records go in a list"
        )
    ids, lengths = report["ids"], report["vanilla_lengths"]
    if not isinstance(ids, list) or not isinstance(lengths, list) or len(ids) != len(lengths):
        raise InputError(path, None, "ids and vanilla_lengths must be lists of the same length")
    return [
        LengthRecord(str(key), _check_length(path, f"vanilla_lengths[{index}]", value))
        for index, (key, value) in enumerate(zip(ids, lengths, strict=True))
    ]


def read_length_records(path: str | Path) -> list[LengthRecord]:
    """Every record of a lengths file, in file order; a bad line is an error naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "no such lengths file (JSONL of {id, true} lines or a bench report .json)")
    with path.open("rb") as handle:
        start = handle.read(4096).lstrip()
    if start.startswith(b"{") and path.suffix == ".json":  # one object: a bench report; else records (JSONL, a list)
        return _bench_report(path)
    records: list[LengthRecord] = []
    seen: set[str] = set()
    # Decoded per line (iter_records): a line whose bytes are not UTF-8 is an error naming it, not a crash.
    for number, record in iter_records(path):
        if isinstance(record, Unreadable):
            raise InputError(path, number, record.problem)
        if not isinstance(record, Mapping):
            raise InputError(path, number, "each record must be a JSON object")
        key = record.get("custom_id", record.get("id"))
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise InputError(path, number, "missing 'id' (a string)")
        try:
            value = _line_length(record)
        except KeyError:
            raise InputError(path, number, f"no length: expected one of {list(LENGTH_KEYS)}") from None
        if str(key) in seen:
            raise InputError(path, number, f"duplicate id {key!r}")
        seen.add(str(key))
        prompt = record.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise InputError(path, number, "'prompt' must be a string")
        records.append(LengthRecord(str(key), _check_length(path, number, value), prompt))
    return records


def read_lengths(path: str | Path) -> dict[str, int]:
    """Lengths by request id."""
    return {record.id: record.length for record in read_length_records(path)}
