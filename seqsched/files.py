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


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


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
    os.chmod(staging, 0o666 & ~_umask())  # mkstemp makes 0600; a result file gets the usual permissions
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


def check_writable(path: str | Path, option: str, *, folder: bool = False) -> Path:
    """Fail now, naming the option, unless `path` (a file, or a folder with `folder`) can be written: checked
    before a model loads, so an unwritable output never costs the work it was meant to keep. Creates nothing."""
    from seqsched.errors import OptionError

    path = Path(path)
    if path.is_dir() and not folder:
        raise OptionError(option, f"{path} is a folder; give a file name")
    if path.exists() and folder and not path.is_dir():
        raise OptionError(option, f"{path} is a file; give a folder")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OptionError(option, f"cannot write {path}: {ancestor} is a file, not a folder")
    try:  # a real probe: os.access says yes for root on a read-only mount and for /proc
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".probe", dir=ancestor))
    except OSError as error:
        reason = error.strerror or str(error)
        raise OptionError(option, f"cannot write {path}: no new file can be made in {ancestor} ({reason})") from None
    return path


@contextlib.contextmanager
def exclusive_lock(path: str | Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` for a block, or raise SeqschedError(busy) at once when another
    process holds it. The kernel drops the lock when its holder dies, so a killed run's leftover file never blocks;
    the file is removed on the way out."""
    import fcntl

    from seqsched.errors import SeqschedError

    path = Path(path)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 64).decode(errors="replace").strip()
            os.close(descriptor)
            raise SeqschedError(busy + (f" (pid {holder})" if holder else "")) from None
        try:  # the holder before us may have removed the file after we opened it: lock the file that is there
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # still held: nobody can lock the old file in between
        os.close(descriptor)
