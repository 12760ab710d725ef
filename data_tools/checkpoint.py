"""The label run's checkpoint: one JSONL line per finished generation, appended and fsynced per batch.

A killed run leaves at most a torn last line, which is dropped on resume; the settings that decide the
samples are kept beside it, so a resumed run with other settings stops instead of mixing samples.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seqsched.errors import InputError
from seqsched.files import append_lines
from seqsched.journal import check_settings, read_journal

CHECKPOINT_FILE = "checkpoint.jsonl"


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
        check_settings(self.folder, settings, f"delete {self.folder} to start over")
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        journal = read_journal(self.path)
        self.dropped_torn_line = journal.dropped_torn_line
        for number, line in journal.lines:
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
        append_lines(self.path, [json.dumps(asdict(sample), ensure_ascii=False) for sample in new])
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
