"""A small length dataset whose lengths follow the prompt ("repeat apple 7 times" -> about 7 x 20 tokens), so a
predictor has something real to learn; saved with the project's schema (train + validation splits)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from data_tools.labels import bucket_up
from data_tools.schema import LengthDatasetMeta, LengthRecord, save_length_dataset
from tests.tiny_model import synthetic_example

TOKENS_PER_WORD = 20
"""Spreads the counts 1..24 over 20..480 tokens, the paper's range, so the 50-token metrics mean something."""


def synthetic_records(count: int, seed: int) -> list[LengthRecord]:
    """Records whose four sampled lengths scatter around the prompt's word count x TOKENS_PER_WORD."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        prompt, answer = synthetic_example(rng)
        words = len(answer.split())
        lengths = [max(1, words * TOKENS_PER_WORD + rng.randint(-8, 8)) for _ in range(4)]
        top = max(lengths)
        records.append(
            LengthRecord(
                id=f"{seed}-{index}",
                prompt=prompt,
                lengths=lengths,
                temperatures=[0.0, 0.3, 0.5, 0.7],
                max_length=top,
                label=bucket_up(top),
                hit_limit=False,
                model="synthetic",
                greedy_length=lengths[0],
            )
        )
    return records


def write_synthetic_dataset(folder: Path, train: int = 240, validation: int = 60) -> Path:
    """A train + validation length dataset in folder."""
    splits = {"train": synthetic_records(train, seed=1), "validation": synthetic_records(validation, seed=2)}
    meta = LengthDatasetMeta(
        model="synthetic", temperatures=[0.0, 0.3, 0.5, 0.7], max_new_tokens=512, bucket=50, source="tests"
    )
    return save_length_dataset(folder, splits, meta)


@pytest.fixture(scope="session")
def length_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic length dataset (train + validation), written once per session."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("lengths") / "synthetic")
