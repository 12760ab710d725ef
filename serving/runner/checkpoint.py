"""`seqsched serve`'s checkpoint: every finished request's record is appended (and fsynced) to
`OUTPUT.partial/finished.jsonl` the moment the runner reports it, so a run that is killed keeps its finished
work, and the same command resumes with the requests that have no result yet.

The folder also holds the settings that decide the outputs (a resumed run with other ones is refused, see
seqsched.journal) and the lock that keeps two runs off one output. Once the output is written the folder goes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from seqsched.engines.api import FinishReason
from seqsched.errors import InputError
from seqsched.files import append_lines
from seqsched.journal import SETTINGS_FILE, check_settings, read_journal
from serving.runner import RequestRecord

FINISHED_FILE = "finished.jsonl"
LOCK_FILE = "lock"
_RECORD_FIELDS = {item.name for item in fields(RequestRecord)}


def working_dir(output: str | Path) -> Path:
    """Where an unfinished serve run keeps its finished requests: `OUTPUT.partial` beside the output."""
    output = Path(output)
    return output.with_name(f"{output.name}.partial")


def record_line(index: int, record: RequestRecord) -> str:
    """One journal line: the request's index in the input's readable requests, and its record."""
    data = asdict(record)
    data["finish_reason"] = record.finish_reason.value
    return json.dumps({"index": index, "record": data}, ensure_ascii=False)


def _record(data: Mapping[str, Any]) -> RequestRecord:
    values = {key: value for key, value in data.items() if key in _RECORD_FIELDS}
    values["finish_reason"] = FinishReason(values["finish_reason"])
    return RequestRecord(**values)


class ServeCheckpoint:
    """The finished requests of a serve run on one output; each process of a data-parallel launch appends to
    its own file (no two writers share one), and the main process reads them all back."""

    def __init__(self, folder: str | Path, process_index: int = 0) -> None:
        self.folder = Path(folder)
        name = FINISHED_FILE if process_index == 0 else f"finished-rank{process_index}.jsonl"
        self.path = self.folder / name
        self.dropped_torn_lines = 0
        self.appended = 0
        """Requests this process kept so far."""

    def start(self, settings: Mapping[str, Any], resume: bool) -> None:
        """Make the folder and check (or save) the settings; resume False first drops what a previous run left."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not resume:
            for path in [*self.folder.glob("finished*.jsonl"), self.folder / SETTINGS_FILE]:
                path.unlink(missing_ok=True)
        check_settings(self.folder, settings, f"pass --resume false (or delete {self.folder}) to start over")

    def load(self, ids: Sequence[str]) -> dict[int, RequestRecord]:
        """The records earlier runs finished, by request index; ids: the input's request ids, to check them by."""
        finished: dict[int, RequestRecord] = {}
        for path in sorted(self.folder.glob("finished*.jsonl")):
            journal = read_journal(path)
            self.dropped_torn_lines += journal.dropped_torn_line
            for number, line in journal.lines:
                try:
                    entry = json.loads(line)
                    index, record = int(entry["index"]), _record(entry["record"])
                except (ValueError, KeyError, TypeError) as error:
                    raise InputError(
                        path, number, f"corrupt checkpoint line ({error}); delete {self.folder} to start over"
                    ) from None
                if not 0 <= index < len(ids) or ids[index] != record.id:
                    raise InputError(
                        path,
                        number,
                        f"request {record.id!r} at index {index} is not in the input; delete {self.folder} to start "
                        "over",
                    )
                finished.setdefault(index, record)
        return finished

    def append(self, index: int, record: RequestRecord) -> None:
        """Keep a finished request; it is on disk (flushed and fsynced) when this returns. Errors are not kept:
        a resumed run tries those requests again."""
        if record.error is None:
            append_lines(self.path, [record_line(index, record)])
            self.appended += 1

    def remove(self) -> None:
        """Drop the folder once the output is written."""
        shutil.rmtree(self.folder, ignore_errors=True)
