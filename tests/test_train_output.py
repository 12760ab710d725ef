"""`seqsched train`'s output folder: resume only the same setup, --resume false clears every kind of training state."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lengthpred.commands import TrainConfig, _prepare_output
from lengthpred.data import LengthData
from lengthpred.head import HeadConfig
from lengthpred.kinds import PredictorKind
from seqsched.errors import SeqschedError

DATA = LengthData("mem", ["a", "b"], ["Name a color.", "Write an essay."], [50, 300], [12, 280])


def test_resume_refuses_another_setup_and_resume_false_clears_ensemble_members(tmp_path: Path) -> None:
    config = TrainConfig(kind=PredictorKind.HEAD, output_dir=str(tmp_path), head=HeadConfig(members=2))
    _prepare_output(config, DATA)
    member = tmp_path / "member-0" / "checkpoints" / "step-10"
    member.mkdir(parents=True)
    _prepare_output(config, DATA)  # same setup: its state stays for the resume
    assert member.is_dir()
    other = replace(config, head=HeadConfig(members=3))
    with pytest.raises(SeqschedError, match="different training setup"):
        _prepare_output(other, DATA)
    _prepare_output(replace(other, resume=False), DATA)
    assert not (tmp_path / "member-0").exists()
