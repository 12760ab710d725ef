"""Typed configs: dataclasses are the source of truth, YAML recipes fill them, the command line overrides
any field (`--config recipes/x.yaml --model.spec smollm2 --limit 256`).

jsonargparse is imported only when a parser is built: `config_from_mapping` (a recipe's data to a config, what
`python -m seqsched_cli.recipe` uses) and `to_dict` work without it, on machines that lack it (the lent GPU).
"""

from __future__ import annotations

import dataclasses
import enum
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from seqsched.errors import OptionError, SeqschedError

if TYPE_CHECKING:  # jsonargparse is a pure-Python package: safe to name in a TYPE_CHECKING block
    from jsonargparse import ArgumentParser

T = TypeVar("T")

_registered: set[type[enum.Enum]] = set()
_set_up = False


class FloatList(tuple):
    """A tuple of floats given as a list (`[0, 0.3]`, YAML lists) or comma-separated (`0,0.3`)."""


def _float_list(value: Any) -> FloatList:
    if isinstance(value, str):
        text = value.strip().removeprefix("[").removesuffix("]")
        value = [part for part in text.split(",") if part.strip()]
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value]
    try:
        return FloatList(float(item) for item in value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"expected numbers like 0,0.3,0.7 or [0, 0.3, 0.7], got {value!r}") from error


def _jsonargparse_ready() -> None:
    """Import jsonargparse and set it up once: attribute docstrings become help, FloatList parses."""
    global _set_up
    if _set_up:
        return
    from jsonargparse import set_parsing_settings
    from jsonargparse.typing import register_type

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    register_type(FloatList, serializer=list, deserializer=_float_list)
    _set_up = True


def _enum_parser(enum_type: type[enum.Enum]) -> Any:
    def parse(value: Any) -> enum.Enum:
        if isinstance(value, enum_type):
            return value
        for member in enum_type:
            if value in (member.value, member.name) or str(value).lower() == member.name.lower():
                return member
        raise ValueError(f"expected one of {[member.value for member in enum_type]}, got {value!r}")

    return parse


def register_enum(enum_type: type[enum.Enum]) -> None:
    """Let configs spell an enum by its value (`--strategy fcr`), as YAML recipes do."""
    if enum_type in _registered:
        return
    _jsonargparse_ready()
    from jsonargparse.typing import register_type

    register_type(enum_type, serializer=lambda member: member.value, deserializer=_enum_parser(enum_type))
    _registered.add(enum_type)


def _register_enums_in(config_type: type) -> None:
    for item in dataclasses.fields(config_type):
        field_type = item.type
        if isinstance(field_type, str):
            hints = _type_hints(config_type)
            field_type = hints.get(item.name)
        for candidate in _flatten_type(field_type):
            if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
                register_enum(candidate)
            elif dataclasses.is_dataclass(candidate) and isinstance(candidate, type):
                _register_enums_in(candidate)


def _type_hints(config_type: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(config_type)


def _flatten_type(field_type: Any) -> list[Any]:
    import typing

    args = typing.get_args(field_type)
    if not args:
        return [field_type]
    flat: list[Any] = []
    for arg in args:
        flat.extend(_flatten_type(arg))
    return flat


def add_dashed_aliases(parser: ArgumentParser) -> None:
    """Let every `--some_option` also be spelled `--some-option` (the same action under two names)."""
    for action in list(parser._actions):
        for option in list(action.option_strings):
            if option.startswith("--") and "_" in option:
                dashed = option.replace("_", "-")
                if dashed not in parser._option_string_actions:
                    action.option_strings.append(dashed)
                    parser._option_string_actions[dashed] = action


def build_parser(config_type: type, prog: str, description: str | None = None) -> ArgumentParser:
    """An argument parser for a config dataclass, with --config for YAML recipes; errors raise, never exit."""
    _jsonargparse_ready()
    from jsonargparse import ActionConfigFile, ArgumentParser

    _register_enums_in(config_type)
    parser = ArgumentParser(
        prog=prog,
        description=description or (config_type.__doc__ or "").strip(),
        exit_on_error=False,
        default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML recipe that fills the fields below.")
    parser.add_class_arguments(config_type, nested_key=None, as_group=False, instantiate=False)
    add_dashed_aliases(parser)
    return parser


def parse_error(error: BaseException) -> SeqschedError:
    """A parser's complaint as one line (jsonargparse explains union types over several lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(error).__name__
    return SeqschedError(text.replace('Parser key "', "option --").replace('":', ":", 1))


def config_from_namespace(config_type: type[T], values: dict[str, Any]) -> T:
    """Build config_type from parsed values (nested dicts become nested configs); bad values -> OptionError."""
    values = {key: value for key, value in values.items() if key not in ("config", "__path__", "debug")}
    return _build(config_type, values)


def parse_config(config_type: type[T], argv: Sequence[str], prog: str, description: str | None = None) -> T:
    """Parse a command line (recipe + overrides) into an instance of config_type."""
    parser = build_parser(config_type, prog, description)
    try:
        namespace = parser.parse_args(list(argv))
    except (ArgumentError, ValueError, TypeError) as error:
        raise parse_error(error) from error
    return config_from_namespace(config_type, namespace.as_dict())


def _build(config_type: type[T], values: dict[str, Any]) -> T:
    hints = _type_hints(config_type)
    kwargs: dict[str, Any] = {}
    for item in dataclasses.fields(config_type):  # type: ignore[arg-type]
        if item.name not in values:
            continue
        value = values[item.name]
        field_type = hints[item.name]
        if isinstance(value, dict) and dataclasses.is_dataclass(field_type):
            try:
                value = _build(field_type, value)  # type: ignore[arg-type]
            except OptionError as error:
                raise error.nested(item.name) from None
        elif isinstance(value, list) and "tuple" in str(field_type):
            value = tuple(value)
        kwargs[item.name] = value
    try:
        return config_type(**kwargs)
    except OptionError:
        raise
    except (ValueError, TypeError) as error:
        raise SeqschedError(f"{config_type.__name__}: {error}") from error


def load_recipe(config_type: type[T], path: str | Path) -> T:
    """Load a YAML recipe into a config (what `--config PATH` does with no overrides)."""
    path = Path(path)
    if not path.is_file():
        raise SeqschedError(f"{path}: no such recipe file")
    return parse_config(config_type, ["--config", str(path)], prog=f"recipe {path}")


def config_from_mapping(config_type: type[T], data: Any, prefix: str = "") -> T:
    """Build config_type from plain data (a recipe's YAML, overrides) without jsonargparse: enums by value,
    nested configs from mappings, tuples from lists; unknown keys and wrong types -> OptionError."""
    if not isinstance(data, dict):
        raise OptionError(prefix.rstrip(".") or "config", f"expected a mapping of options, got {data!r}")
    hints = _type_hints(config_type)
    names = {item.name for item in dataclasses.fields(config_type)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise OptionError(f"{prefix}{unknown[0]}", f"no such option in {config_type.__name__}")
    kwargs = {key: _coerce(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
    try:
        return config_type(**kwargs)
    except OptionError as error:
        # Some configs already name their options in full (EngineConfig's "engine.slots"): not nested twice.
        nest = prefix and not error.option.startswith(prefix)
        raise error.nested(prefix.rstrip(".")) if nest else error from None
    except (ValueError, TypeError) as error:
        raise SeqschedError(f"{config_type.__name__}: {error}") from error


def _coerce(field_type: Any, value: Any, option: str) -> Any:
    """One value converted to its field's type (the subset of types our configs use)."""
    import types
    import typing

    origin = typing.get_origin(field_type)
    args = typing.get_args(field_type)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = []
        for arg in (item for item in args if item is not type(None)):
            try:
                return _coerce(arg, value, option)
            except OptionError as error:
                problems.append(error.problem)
        raise OptionError(option, "; ".join(problems))
    if dataclasses.is_dataclass(field_type) and isinstance(field_type, type):
        return value if isinstance(value, field_type) else config_from_mapping(field_type, value, f"{option}.")
    if isinstance(field_type, type) and issubclass(field_type, enum.Enum):
        try:
            return _enum_parser(field_type)(value)
        except ValueError as error:
            raise OptionError(option, str(error)) from None
    if field_type is FloatList:
        try:
            return _float_list(value)
        except ValueError as error:
            raise OptionError(option, str(error)) from None
    if origin is tuple:
        items = [value] if isinstance(value, str) or not isinstance(value, list | tuple) else value
        item_type = args[0] if args else Any
        return tuple(_coerce(item_type, item, option) for item in items)
    if origin is dict:
        if not isinstance(value, dict):
            raise OptionError(option, f"expected a mapping, got {value!r}")
        return dict(value)
    if field_type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if field_type in (int, float, str, bool) and not (
        isinstance(value, field_type) and (field_type is bool or not isinstance(value, bool))
    ):
        raise OptionError(option, f"expected {field_type.__name__}, got {value!r}")
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain JSON-able data (enums as values, paths as strings)."""

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {item.name: plain(getattr(value, item.name)) for item in dataclasses.fields(value)}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {str(key): plain(item) for key, item in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(config)
