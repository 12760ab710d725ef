"""`python -m seqsched_cli.recipe COMMAND RECIPE.yaml [field=value ...]`: run a command from a recipe without
jsonargparse (the lent GPU machine has none and fetches nothing).

The recipe's YAML and the overrides fill the command's config dataclass through seqsched.config's
jsonargparse-free builder; dotted fields reach nested configs (`model.random_init=vicuna-7b`), values are read
as YAML (`strategies=[vanilla,fcr]`, `count=200`, `tune.lengths=null`). Same commands and configs as `seqsched`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seqsched.errors import SeqschedError
from seqsched_cli.main import COMMANDS, load_attr

USAGE = "usage: python -m seqsched_cli.recipe COMMAND RECIPE.yaml [field=value ...]"


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe's YAML as a mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SeqschedError(f"{path}: no such recipe file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise SeqschedError(f"{path}: invalid YAML ({error})") from error
    if not isinstance(data, dict):
        raise SeqschedError(f"{path}: a recipe is a mapping of options")
    return data


def apply_override(data: dict[str, Any], text: str) -> None:
    """Set `a.b=value` (value read as YAML) in a nested mapping."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SeqschedError(f"override {text!r}: expected field=value (e.g. count=200 or model.spec=smollm2)")
    *parents, last = key.strip().removeprefix("--").replace("-", "_").split(".")
    target = data
    for name in parents:
        child = target.setdefault(name, {})
        if not isinstance(child, dict):
            raise SeqschedError(f"override {text!r}: {name} is not a group of options")
        target = child
    target[last] = yaml.safe_load(value) if value.strip() else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run COMMAND with the recipe and overrides; one-line errors like `seqsched`."""
    from seqsched.config import config_from_mapping

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] in ("-h", "--help"):
        print(USAGE + "\ncommands: " + ", ".join(entry.name for entry in COMMANDS))
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    try:
        entry = next((command for command in COMMANDS if command.name == args[0]), None)
        if entry is None:
            raise SeqschedError(f"no command {args[0]!r}; commands: {', '.join(c.name for c in COMMANDS)}")
        data = read_recipe(args[1])
        for text in args[2:]:
            apply_override(data, text)
        config = config_from_mapping(load_attr(entry.config), data)
        import logging

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        result = load_attr(entry.run)(config)
    except SeqschedError as error:
        print(f"seqsched: error: {error}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
