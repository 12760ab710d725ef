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


class OptionError(SeqschedError, ValueError):
    """A config field holds a value it cannot take; the message names the option (`--bin_width: ...`)."""

    def __init__(self, option: str, problem: str) -> None:
        self.option = option
        self.problem = problem
        super().__init__(f"--{option}: {problem}")

    def nested(self, parent: str) -> OptionError:
        """The same error seen from the config that holds this one under `parent` (`--model.spec: ...`)."""
        return OptionError(f"{parent}.{self.option}", self.problem)


def require(condition: bool, option: str, problem: str) -> None:
    """Raise OptionError(option, problem) unless condition holds (configs' __post_init__ checks)."""
    if not condition:
        raise OptionError(option, problem)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is (see seqsched_cli.main): a run stops as on Ctrl-C, its cleanup runs
    (staging files removed, locks released) and what it checkpointed stays for a resume."""


def require_at_least(config: object, minimum: float, *names: str) -> None:
    """OptionError for the first of config's named fields below minimum (a field left None is unset, not checked)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise OptionError(name, f"must be >= {minimum}, got {value}")
