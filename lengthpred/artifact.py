"""A trained predictor on disk: a folder with predictor.json (its kind and settings) and the kind's files.

This folder is what training writes, what `seqsched eval --predictor FOLDER` reads, and what the registry
logs as the MLflow pyfunc model's artifact.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from lengthpred.kinds import PredictorKind, resolve, spec
from lengthpred.predictor import LengthPredictor
from seqsched.errors import SeqschedError

T = TypeVar("T")

MANIFEST = "predictor.json"
FORMAT_VERSION = 1


def write_manifest(folder: str | Path, kind: PredictorKind, settings: dict[str, Any]) -> Path:
    """Write predictor.json into folder (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT_VERSION, "kind": kind.value, **settings}
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """predictor.json of a saved predictor folder."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise SeqschedError(f"{folder}: not a saved predictor (no {MANIFEST}); train one with `seqsched train`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_VERSION:
        raise SeqschedError(f"{path}: format {manifest.get('format')!r} is not {FORMAT_VERSION}; retrain or upgrade")
    return manifest


def predictor_kind(folder: str | Path) -> PredictorKind:
    """The kind of a saved predictor."""
    value = read_manifest(folder)["kind"]
    try:
        return PredictorKind(value)
    except ValueError as error:
        known = [kind.value for kind in PredictorKind]
        raise SeqschedError(f"{folder}: unknown predictor kind {value!r}; known: {known}") from error


def load_saved(folder: str | Path) -> LengthPredictor:
    """Load a saved predictor folder as a LengthPredictor (its kind's registered loader)."""
    folder = Path(folder)
    loader = resolve(spec(predictor_kind(folder)).load)
    return loader(folder, read_manifest(folder))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON-able data (enums as their values)."""
    from seqsched.config import to_dict

    return to_dict(config)


def config_from_dict(config_type: type[T], values: dict[str, Any]) -> T:
    """Rebuild a config dataclass written by config_to_dict (enums, nested configs, tuples)."""
    hints = typing.get_type_hints(config_type)
    kwargs: dict[str, Any] = {}
    for item in dataclasses.fields(config_type):  # type: ignore[arg-type]
        if item.name not in values:
            continue
        value, kind = values[item.name], hints[item.name]
        options = [option for option in typing.get_args(kind) if option is not type(None)] or [kind]
        for option in options:
            if isinstance(option, type) and issubclass(option, enum.Enum) and value is not None:
                value = option(value)
            elif dataclasses.is_dataclass(option) and isinstance(value, dict):
                value = config_from_dict(option, value)  # type: ignore[arg-type]
        if isinstance(value, list) and typing.get_origin(kind) is tuple:
            value = tuple(value)
        kwargs[item.name] = value
    return config_type(**kwargs)
