"""Typed configs: dataclasses are the source of truth, YAML recipes fill them, the command line overrides
any field (`--config recipes/x.yaml --model.spec smollm2 --limit 256`)."""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
import pkgutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings
from jsonargparse.typing import register_type

from serving.errors import SeqschedError

T = TypeVar("T")

set_parsing_settings(docstring_parse_attribute_docstrings=True)

_PROJECT_PACKAGES = ("data_tools", "lengthpred", "serving")
_registered: set[type[enum.Enum]] = set()


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


def build_parser(config_type: type, prog: str, description: str | None = None) -> ArgumentParser:
    """An argument parser for a config dataclass, with --config for YAML recipes."""
    _register_enums_in(config_type)
    parser = ArgumentParser(
        prog=prog,
        description=description or (config_type.__doc__ or "").strip(),
        exit_on_error=True,
        default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML recipe that fills the fields below.")
    parser.add_class_arguments(config_type, nested_key=None, as_group=False)
    return parser


def parse_config(config_type: type[T], argv: Sequence[str], prog: str, description: str | None = None) -> T:
    """Parse a command line (recipe + overrides) into an instance of config_type."""
    parser = build_parser(config_type, prog, description)
    namespace = parser.parse_args(list(argv))
    values = parser.instantiate(namespace).as_dict()
    values.pop("config", None)
    return _build(config_type, values)


def _build(config_type: type[T], values: dict[str, Any]) -> T:
    hints = _type_hints(config_type)
    kwargs: dict[str, Any] = {}
    for item in dataclasses.fields(config_type):  # type: ignore[arg-type]
        if item.name not in values:
            continue
        value = values[item.name]
        field_type = hints[item.name]
        if isinstance(value, dict) and dataclasses.is_dataclass(field_type):
            value = _build(field_type, value)  # type: ignore[arg-type]
        elif isinstance(value, list) and "tuple" in str(field_type):
            value = tuple(value)
        kwargs[item.name] = value
    return config_type(**kwargs)


def load_recipe(config_type: type[T], path: str | Path) -> T:
    """Load a YAML recipe into a config (what `--config PATH` does with no overrides)."""
    path = Path(path)
    if not path.is_file():
        raise SeqschedError(f"{path}: no such recipe file")
    return parse_config(config_type, ["--config", str(path)], prog=f"recipe {path}")


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


def to_json(config: Any) -> str:
    """A config as a JSON string."""
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def project_modules() -> list[str]:
    """All modules of the project's packages (used by tests that check imports)."""
    names: list[str] = []
    for package_name in _PROJECT_PACKAGES:
        package = importlib.import_module(package_name)
        names.extend(info.name for info in pkgutil.iter_modules(package.__path__, f"{package_name}."))
    return names
