"""What the server keeps across restarts: files on disk and a sqlite index of files, batch jobs and finished lines.

Layout under --data_dir: `files/<file id>` (contents), `tmp/` (uploads being written), `index.sqlite`. Ids are
ours (`file-` / `batch_` + 32 random hex digits) and a path is only ever built from an id read back from the
index, never from a client's string: a client names objects by id, and an id that is not in the index is a 404.

Durability: sqlite in WAL mode with synchronous=NORMAL, so a committed row survives the process being killed
(kill -9); only an OS crash or power loss may lose the last commits. A file's contents are written and fsynced
before its row is committed; contents without a row (a crash in between) are removed at start.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from seqsched.files import exclusive_lock
from serving.server.objects import file_object

FILE_ID = re.compile(r"file-[0-9a-f]{32}")
BATCH_ID = re.compile(r"batch_[0-9a-f]{32}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (batch_id, line)
);
"""


def new_file_id() -> str:
    """A fresh opaque file id."""
    return f"file-{secrets.token_hex(16)}"


def new_batch_id() -> str:
    """A fresh opaque batch id."""
    return f"batch_{secrets.token_hex(16)}"


class Store:
    """Files, batch objects and finished batch lines; safe to use from several threads."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir)
        self.files_dir = self.root / "files"
        self.tmp_dir = self.root / "tmp"
        for folder in (self.files_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._held = ExitStack()  # one server per data_dir: a second one would remove the first's uploads
        busy = f"another seqsched server uses --data_dir {self.root}: stop it, or choose another --data_dir"
        self._held.enter_context(exclusive_lock(self.root / "lock", busy))
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.root / "index.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._remove_orphans()

    def close(self) -> None:
        """Close the index and let another server use the folder."""
        with self._lock:
            self._db.close()
        self._held.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, parameters: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(parameters)).fetchall()

    def _remove_orphans(self) -> None:
        """Contents without an index row (a crash between writing and committing) and unfinished uploads."""
        known = {row[0] for row in self._query("SELECT id FROM files")}
        for path in self.files_dir.iterdir():
            if path.name not in known:
                path.unlink(missing_ok=True)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    # Files.

    def temp_path(self) -> Path:
        """A fresh path under tmp/ to write an upload to before add_file takes it."""
        return self.tmp_dir / secrets.token_hex(16)

    def add_file(self, written: Path, filename: str, purpose: str) -> dict[str, Any]:
        """Index a file written under tmp/ (fsynced here, then moved into files/) and return its File object."""
        with written.open("rb+") as handle:
            os.fsync(handle.fileno())
        file_id = new_file_id()
        size = written.stat().st_size
        created = int(time.time())
        os.replace(written, self.files_dir / file_id)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO files (id, filename, purpose, bytes, created_at) VALUES (?, ?, ?, ?, ?)",
                (file_id, filename, purpose, size, created),
            )
        return file_object(file_id, filename, purpose, size, created)

    def add_bytes(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        """Write and index a file the server made (a batch's output or error file)."""
        path = self.temp_path()
        path.write_bytes(data)
        return self.add_file(path, filename, purpose)

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        """A File object by id (None: no such file)."""
        if not FILE_ID.fullmatch(file_id):
            return None
        rows = self._query("SELECT id, filename, purpose, bytes, created_at FROM files WHERE id = ?", [file_id])
        return file_object(*rows[0]) if rows else None

    def file_path(self, file: dict[str, Any]) -> Path:
        """Where a file's contents are (from an object get_file returned: the id is the index's)."""
        return self.files_dir / file["id"]

    def list_files(
        self, purpose: str | None, after: str | None, limit: int, descending: bool
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of File objects (by upload order) and whether more follow."""
        return self._page("files", "id, filename, purpose, bytes, created_at", purpose, after, limit, descending)

    def delete_file(self, file_id: str) -> bool:
        """Delete a file's row and contents; False when there is no such file."""
        file = self.get_file(file_id)
        if file is None:
            return False
        with self._transaction() as db:
            db.execute("DELETE FROM files WHERE id = ?", [file_id])
        self.file_path(file).unlink(missing_ok=True)
        return True

    def _page(
        self, table: str, columns: str, purpose: str | None, after: str | None, limit: int, descending: bool
    ) -> tuple[list[Any], bool]:
        where, parameters = [], []
        if purpose is not None:
            where.append("purpose = ?")
            parameters.append(purpose)
        if after is not None:
            cursor = self._query(f"SELECT seq FROM {table} WHERE id = ?", [after])
            if cursor:
                where.append("seq < ?" if descending else "seq > ?")
                parameters.append(cursor[0][0])
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "DESC" if descending else "ASC"
        rows = self._query(
            f"SELECT {columns} FROM {table} {clause} ORDER BY seq {order} LIMIT ?", [*parameters, limit + 1]
        )
        more = len(rows) > limit
        rows = rows[:limit]
        if table == "files":
            return [file_object(*row) for row in rows], more
        return [json.loads(row[0]) for row in rows], more

    # Batches.

    def put_batch(self, batch: dict[str, Any]) -> None:
        """Insert or update a batch object."""
        data = json.dumps(batch)
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE batches SET status = ?, data = ? WHERE id = ?", (batch["status"], data, batch["id"])
            ).rowcount
            if not updated:
                db.execute(
                    "INSERT INTO batches (id, status, data) VALUES (?, ?, ?)", (batch["id"], batch["status"], data)
                )

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        """A batch object by id (None: no such batch)."""
        if not BATCH_ID.fullmatch(batch_id):
            return None
        rows = self._query("SELECT data FROM batches WHERE id = ?", [batch_id])
        return json.loads(rows[0][0]) if rows else None

    def list_batches(self, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """A page of batch objects, newest first (as OpenAI lists them)."""
        return self._page("batches", "data", None, after, limit, descending=True)

    def batches_in(self, statuses: Iterable[str]) -> list[dict[str, Any]]:
        """Batch objects in any of these statuses, oldest first."""
        wanted = list(statuses)
        marks = ", ".join("?" for _ in wanted)
        rows = self._query(f"SELECT data FROM batches WHERE status IN ({marks}) ORDER BY seq", wanted)
        return [json.loads(row[0]) for row in rows]

    def batches_using(self, file_id: str, statuses: Iterable[str]) -> list[str]:
        """Ids of batches in these statuses whose input is this file."""
        return [batch["id"] for batch in self.batches_in(statuses) if batch.get("input_file_id") == file_id]

    # Finished batch lines.

    def save_line(self, batch_id: str, line: int, record: dict[str, Any]) -> bool:
        """Keep a finished line's record (committed when this returns); False when it was kept already."""
        with self._transaction() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO batch_lines (batch_id, line, record) VALUES (?, ?, ?)",
                (batch_id, line, json.dumps(record, ensure_ascii=False)),
            ).rowcount
        return bool(inserted)

    def lines(self, batch_id: str) -> dict[int, dict[str, Any]]:
        """Every finished line's record of a batch, by line index."""
        rows = self._query("SELECT line, record FROM batch_lines WHERE batch_id = ?", [batch_id])
        return {int(line): json.loads(record) for line, record in rows}

    def drop_lines(self, batch_id: str) -> None:
        """Forget a finished batch's lines (its output and error files hold them now)."""
        with self._transaction() as db:
            db.execute("DELETE FROM batch_lines WHERE batch_id = ?", [batch_id])
