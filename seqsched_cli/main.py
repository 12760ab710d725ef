"""`seqsched`: one console script over the commands of the three packages (jsonargparse subcommands).

Every command is a typed function over its config dataclass (`serving.plan_command.plan(PlanConfig)`), so the
demo, tests and scripts call the same functions with config objects. Options come from the dataclass fields
(with their docstrings as help), YAML recipes fill them with `--config`, and `--some_option` may also be
spelled `--some-option`. Modules holding configs import no torch, so `seqsched plan` starts without it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from seqsched.errors import SeqschedError


@dataclass(frozen=True)
class Command:
    """A subcommand: its config dataclass and the function that runs it (both `module:attribute`)."""

    name: str
    """The words after `seqsched` (`label import` is a subcommand of `label`)."""
    summary: str
    config: str
    run: str


COMMANDS: tuple[Command, ...] = (
    Command(
        "label",
        "build a length dataset: sample K responses per instruction, label = longest, bucketed",
        "data_tools.commands:LabelConfig",
        "data_tools.commands:label",
    ),
    Command(
        "label import",
        "import the paper's published length labels as a length dataset",
        "data_tools.commands:ImportConfig",
        "data_tools.commands:label_import",
    ),
    Command(
        "label stats",
        "statistics and plots of a length dataset",
        "data_tools.commands:StatsConfig",
        "data_tools.commands:label_stats",
    ),
    Command(
        "label export",
        "a length dataset's lengths only, in the paper's format",
        "data_tools.commands:ExportConfig",
        "data_tools.commands:label_export",
    ),
    Command(
        "train",
        "train a length predictor, evaluate it, log it to MLflow (--register-as NAME --alias champion)",
        "lengthpred.commands:TrainConfig",
        "lengthpred.commands:train",
    ),
    Command(
        "eval",
        "evaluate a length predictor on a length dataset",
        "lengthpred.commands:EvalConfig",
        "lengthpred.commands:evaluate",
    ),
    Command(
        "register",
        "register a trained predictor in the MLflow registry and set an alias",
        "lengthpred.commands:RegisterConfig",
        "lengthpred.commands:register",
    ),
    Command(
        "plan",
        "the scheduler alone: a length trace in, a batch plan out (no model)",
        "serving.plan_command:PlanConfig",
        "serving.plan_command:plan",
    ),
    Command(
        "serve",
        "scheduled batch inference with a chosen predictor version",
        "serving.serve_command:ServeConfig",
        "serving.serve_command:serve",
    ),
    Command(
        "server",
        "an OpenAI-compatible API (chat, completions, files, batches) with one length-aware queue",
        "serving.server.config:ServerConfig",
        "serving.server.command:server",
    ),
    Command(
        "generate",
        "the engine alone over a file of prompts (vanilla batches)",
        "serving.generate_command:GenerateConfig",
        "serving.generate_command:generate",
    ),
    Command(
        "bench",
        "strategies side by side on the same prompts: table, JSON, chart",
        "serving.bench:BenchConfig",
        "serving.bench:bench",
    ),
    Command(
        "demo",
        "the whole pipeline with the real SmolLM2 (what `make demo` runs)",
        "serving.demo:DemoConfig",
        "serving.demo:demo",
    ),
)


def load_attr(target: str) -> Any:
    """Import `module:attribute`."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def build_parser() -> Any:
    """The `seqsched` parser: one subcommand per command, nested for `label import|stats|export`."""
    from jsonargparse import ArgumentParser

    from seqsched.config import build_parser as config_parser

    root = ArgumentParser(
        prog="seqsched",
        description="Response-length prediction and sequence scheduling for batch LLM inference.",
        exit_on_error=False,
    )
    root.add_argument("--debug", action="store_true", help="Full tracebacks and debug logs.")
    top = root.add_subcommands(dest="command", required=True)
    nested: dict[str, Any] = {}
    # Level order: every top-level command first, then the nested ones (jsonargparse requires it).
    for entry in sorted(COMMANDS, key=lambda command: len(command.name.split())):
        words = entry.name.split()
        parser = config_parser(load_attr(entry.config), prog=f"seqsched {entry.name}", description=entry.summary)
        parser.add_argument("--debug", action="store_true", help="Full tracebacks and debug logs.")
        if len(words) == 1:
            top.add_subcommand(entry.name, parser, help=entry.summary)
            continue
        parent = _parent_parser(top, words[0])
        if words[0] not in nested:
            nested[words[0]] = parent.add_subcommands(dest="subcommand", required=False)
        nested[words[0]].add_subcommand(words[1], parser, help=entry.summary)
    return root


def _parent_parser(subcommands: Any, name: str) -> Any:
    return subcommands._name_parser_map[name]


def resolve(namespace: Any) -> tuple[Command, dict[str, Any], bool]:
    """The command a parsed namespace selects, its values and whether --debug was given anywhere."""
    words = [namespace.command]
    values = namespace[namespace.command]
    debug = bool(namespace.get("debug")) or bool(values.get("debug"))
    sub = values.get("subcommand")
    if sub:
        words.append(sub)
        values = values[sub]
        debug = debug or bool(values.get("debug"))
    name = " ".join(words)
    entry = next(command for command in COMMANDS if command.name == name)
    return entry, values.as_dict(), debug


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if debug else "%(message)s",
    )
    for noisy in ("urllib3", "filelock", "httpx", "alembic", "mlflow", "git", "matplotlib", "PIL", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_command(entry: Command, values: dict[str, Any]) -> int:
    """Build the command's config from parsed values and run it."""
    from seqsched.config import config_from_namespace
    from seqsched.distributed import finish

    config = config_from_namespace(load_attr(entry.config), values)
    result = load_attr(entry.run)(config)
    finish()  # a data-parallel launch ends together (no process leaves while a peer still writes)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _terminate(signum: int, frame: Any) -> None:
    from seqsched.errors import Terminated

    raise Terminated


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops a command as Ctrl-C does (cleanup runs, a one-line message) instead of killing it mid-write;
    the previous handler comes back afterwards (main may run inside another program, e.g. the tests)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `seqsched` console script."""
    from argparse import ArgumentError

    from seqsched.errors import Terminated

    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("SEQSCHED_DEBUG") == "1" or "--debug" in args
    try:
        parser = build_parser()
        if not args:
            parser.print_help()
            return 0
        try:
            namespace = parser.parse_args(args)
        except SystemExit as done:  # --help printed its text
            return int(done.code or 0)
        except (ArgumentError, ValueError, TypeError) as error:
            from seqsched.config import parse_error

            raise parse_error(error) from error
        entry, values, debug = resolve(namespace)
        debug = debug or os.environ.get("SEQSCHED_DEBUG") == "1"
        _setup_logging(debug)
        with _stop_on_sigterm():
            return run_command(entry, values)
    except SeqschedError as error:
        if debug:
            raise
        print(f"seqsched: error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        print("seqsched: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("seqsched: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
