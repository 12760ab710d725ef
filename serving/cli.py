"""`seqsched`: one console script; each package owns its subcommands, imported only when run."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from serving.errors import SeqschedError


@dataclass(frozen=True)
class Command:
    """A subcommand: where its code lives (imported lazily) and its recipe config type."""

    name: str
    summary: str
    target: str | None
    """`module:function` taking argv; None while the part that provides it is not built."""
    provider: str
    config: str | None = None
    """`module:ConfigClass` filled by recipes named `<name>.yaml`."""


COMMANDS: tuple[Command, ...] = (
    Command(
        "generate",
        "run the engine on a file of prompts (vanilla batches)",
        "serving.generate:generate_main",
        "serving",
        "serving.generate:GenerateConfig",
    ),
    Command("demo", "the end-to-end demo that `make demo` runs", "serving.demo:demo_main", "serving"),
    Command(
        "label",
        "build length datasets: sample K responses per instruction (also `label import`, `label stats`)",
        "data_tools.label_cli:label_main",
        "data_tools",
        "data_tools.label_cli:LabelConfig",
    ),
    Command(
        "train",
        "train a length predictor, evaluate it and log it to MLflow (--register-as NAME --alias champion)",
        "lengthpred.cli:train_main",
        "lengthpred",
        "lengthpred.cli:TrainConfig",
    ),
    Command(
        "eval",
        "evaluate a length predictor on a length dataset",
        "lengthpred.cli:eval_main",
        "lengthpred",
        "lengthpred.cli:EvalConfig",
    ),
    Command(
        "register",
        "register a trained predictor in the MLflow registry",
        "lengthpred.cli:register_main",
        "lengthpred",
        "lengthpred.cli:RegisterConfig",
    ),
    Command(
        "plan",
        "the scheduler alone: a length trace in, a batch plan out",
        "serving.plan_trace:plan_main",
        "serving",
        "serving.plan_trace:PlanConfig",
    ),
    Command(
        "serve",
        "scheduled batch inference with a chosen predictor version",
        "serving.serve:serve_main",
        "serving",
        "serving.serve:ServeConfig",
    ),
    Command(
        "bench",
        "strategies side by side in one run (vanilla, seqsch, vbs, fcr, perception, oracle): table, JSON, plots",
        "serving.bench:bench_main",
        "serving",
        "serving.bench:BenchConfig",
    ),
)


def command(name: str) -> Command:
    """The subcommand called name."""
    for entry in COMMANDS:
        if entry.name == name:
            return entry
    raise SeqschedError(f"unknown command {name!r}; `seqsched --help` lists them")


def load_attr(target: str) -> object:
    """Import `module:attribute`."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def usage() -> str:
    """The top-level help text."""
    lines = [
        "usage: seqsched [--debug] COMMAND [options]   (seqsched COMMAND --help for a command's options)",
        "",
        "Response-length prediction and sequence scheduling for batch LLM inference.",
        "",
        "commands:",
    ]
    width = max(len(entry.name) for entry in COMMANDS)
    for entry in COMMANDS:
        note = "" if entry.target else f"  [not built yet: provided by {entry.provider}]"
        lines.append(f"  {entry.name.ljust(width)}  {entry.summary}{note}")
    lines += ["", "--debug shows full tracebacks and debug logs."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `seqsched` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("SEQSCHED_DEBUG") == "1"
    args = [arg for arg in args if arg != "--debug"]
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if debug else "%(message)s",
    )
    for noisy in ("urllib3", "filelock", "httpx", "alembic", "mlflow", "git", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    try:
        entry = command(args[0])
        if entry.target is None:
            raise SeqschedError(f"`seqsched {entry.name}` is not built yet: it will be provided by {entry.provider}")
        runner = load_attr(entry.target)
        result = runner(args[1:])  # type: ignore[operator]
        return int(result or 0)
    except SeqschedError as error:
        if debug:
            raise
        print(f"seqsched: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqsched: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
