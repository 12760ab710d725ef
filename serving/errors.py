"""The one exception type the CLI turns into a one-line message (no traceback unless --debug)."""

from __future__ import annotations


class SeqschedError(Exception):
    """A user-facing error: what went wrong, where, and what to do about it."""


class InputError(SeqschedError):
    """Bad input data; the message names the file and line (or record index)."""

    def __init__(self, path: object, where: int | str | None, problem: str) -> None:
        self.path = str(path)
        self.where = where
        self.problem = problem
        location = self.path if where is None else f"{self.path}:{where}"
        super().__init__(f"{location}: {problem}")
