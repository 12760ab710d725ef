"""A long run's working folder: the settings it started with, and append-only JSONL journals of finished work.

Every append is flushed and fsynced (seqsched.files.append_lines), so a killed run loses at most the line being
written: a torn last line is dropped when the journal is read back. A resumed run compares its settings with the
saved ones and stops on any difference instead of mixing results made two ways. `seqsched label`
(data_tools.checkpoint) and `seqsched serve` (serving.runner.checkpoint) keep their runs this way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqsched.errors import SeqschedError
from seqsched.files import write_text

SETTINGS_FILE = "settings.json"


def check_settings(folder: str | Path, settings: Mapping[str, Any], start_over: str) -> None:
    """Save the settings of a new run in folder, or stop unless they equal those a previous run saved there.

    start_over: what the message tells the user to do to drop the unfinished run instead.
    """
    path = Path(folder) / SETTINGS_FILE
    settings = json.loads(json.dumps(dict(settings)))  # compare as saved: tuples are lists, keys are strings
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(key for key in settings.keys() | saved.keys() if settings.get(key) != saved.get(key))
        if changed:
            details = ", ".join(f"{key}: {saved.get(key)!r} -> {settings.get(key)!r}" for key in changed)
            raise SeqschedError(
                f"{folder}: an unfinished run with other settings is here ({details}); "
                f"rerun with the same settings to resume it, or {start_over}"
            )
        return
    write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


@dataclass
class JournalLines:
    """The complete lines of a journal file, numbered from 1, and whether a torn last line was dropped."""

    lines: list[tuple[int, bytes]] = field(default_factory=list)
    dropped_torn_line: bool = False


def read_journal(path: str | Path, *, repair: bool = True) -> JournalLines:
    """A journal's complete lines; with repair, a torn last line (its write never finished) is cut off the file
    so that the next append starts on a fresh line."""
    path = Path(path)
    if not path.exists():
        return JournalLines()
    data = path.read_bytes()
    parts = data.split(b"\n")
    complete, torn = parts[:-1], parts[-1]
    if torn and repair:
        with path.open("r+b") as handle:
            handle.truncate(len(data) - len(torn))
            handle.flush()
            os.fsync(handle.fileno())
    numbered = [(number, line) for number, line in enumerate(complete, start=1) if line.strip()]
    return JournalLines(numbered, dropped_torn_line=bool(torn))
