"""The label run's checkpoint: one JSONL line per finished generation, appended and fsynced per batch.

A killed run leaves at most a torn last line, which is dropped on resume; the settings that decide the
samples are kept beside it, so a resumed run with other settings stops instead of mixing samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seqsched.errors import InputError, SeqschedError
from seqsched.files import write_text

CHECKPOINT_FILE = "checkpoint.jsonl"
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class Sample:
    """One finished generation of one instruction."""

    id: str
    temperature: float
    index: int
    """Sample number at this temperature (0-based)."""
    length: int
    """Generated tokens, counted with the served model's tokenizer."""
    hit_limit: bool
    text: str

    @property
    def key(self) -> tuple[str, float, int]:
        """What identifies the generation: (instruction id, temperature, sample index)."""
        return (self.id, self.temperature, self.index)


def working_dir(out_dir: str | Path) -> Path:
    """Where an unfinished run keeps its checkpoint: `DIR.partial` beside the output folder."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.partial")


class Checkpoint:
    """Finished samples of a run; load what a previous run left, then append batch by batch."""

    def __init__(self, folder: str | Path, settings: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / CHECKPOINT_FILE
        self.samples: dict[tuple[str, float, int], Sample] = {}
        self.dropped_torn_line = False
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_settings(dict(settings))
        if self.path.exists():
            self._load()

    def _check_settings(self, settings: dict[str, Any]) -> None:
        settings_path = self.folder / SETTINGS_FILE
        if settings_path.exists():
            saved = json.loads(settings_path.read_text(encoding="utf-8"))
            changed = sorted(key for key in settings.keys() | saved.keys() if settings.get(key) != saved.get(key))
            if changed:
                details = ", ".join(f"{key}: {saved.get(key)!r} -> {settings.get(key)!r}" for key in changed)
                raise SeqschedError(
                    f"{self.folder}: an unfinished run with other settings is here ({details}); "
                    f"rerun with the same settings to resume it, or delete {self.folder} to start over"
                )
            return
        write_text(settings_path, json.dumps(settings, indent=2, sort_keys=True) + "\n")

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # Everything after the last newline is a line whose write did not finish: drop it and redo it.
        complete, torn = lines[:-1], lines[-1]
        if torn:
            self.dropped_torn_line = True
            with self.path.open("r+b") as handle:
                handle.truncate(len(data) - len(torn))
                handle.flush()
                os.fsync(handle.fileno())
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                sample = Sample(**json.loads(line))
            except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as error:
                raise InputError(
                    self.path, number, f"corrupt checkpoint line ({error}); delete {self.folder} to start over"
                ) from None
            self.samples.setdefault(sample.key, sample)

    def __contains__(self, key: tuple[str, float, int]) -> bool:
        return key in self.samples

    def append(self, samples: Iterable[Sample]) -> None:
        """Add finished samples; they are on disk (flushed and fsynced) when this returns."""
        new = [sample for sample in samples if sample.key not in self.samples]
        if not new:
            return
        payload = "".join(json.dumps(asdict(sample), ensure_ascii=False) + "\n" for sample in new)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        for sample in new:
            self.samples[sample.key] = sample


def finished_samples(work: str | Path, settings: Mapping[str, Any]) -> dict[tuple[str, float, int], Sample]:
    """Every sample in the checkpoints under a run's working folder (its own and, for a data-parallel run, each
    shard's), so a resumed run of any process count skips them. Checkpoints made with other settings are refused."""
    samples: dict[tuple[str, float, int], Sample] = {}
    work = Path(work)
    for path in sorted(work.glob(f"**/{CHECKPOINT_FILE}")):
        samples.update(Checkpoint(path.parent, settings).samples)
    return samples
