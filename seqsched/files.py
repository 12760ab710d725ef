"""Atomic writes, the project's one way to write a result: stage beside the target (a name unique to this
process), fsync, then rename over it. A killed run never leaves a half-written file or folder behind, and two
runs writing the same target never share a staging name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A staging file path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + path.suffix, dir=path.parent)
    os.close(handle)
    staging = Path(name)
    try:
        yield staging
        _fsync(staging)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A staging folder to fill; on success it replaces the folder `path` (an old one is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield staging
        if path.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            backup.rmdir()
            path.rename(backup)
            staging.rename(path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) atomically; return the path."""
    with atomic_path(path) as staging:
        staging.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any, *, compact: bool = False) -> Path:
    """Write data as JSON atomically (indented, or compact for large documents); return the path."""
    if compact:  # json.dumps in one shot runs the C encoder
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    else:
        text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    return write_text(path, text + "\n")


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write records as JSON lines atomically; return the path."""
    with atomic_path(path) as staging, staging.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Path(path)


def append_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Append lines to a log-like file and fsync it: they are on disk when this returns."""
    payload = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    if not payload:
        return
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
