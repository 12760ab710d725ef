"""Model specs resolve to folders, or fail with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqsched.errors import SeqschedError
from seqsched.model_specs import DType, ModelConfig, load_model, pick_dtype, resolve_model_path


def test_folder_spec_loads(tiny_model_dir: Path) -> None:
    loaded = load_model(ModelConfig(spec=str(tiny_model_dir), dtype=DType.FLOAT32))
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.device.type == "cpu" and not loaded.model.training


def test_bad_specs_have_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SeqschedError, match=r"no config\.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(SeqschedError, match="no such GGUF file"):
        resolve_model_path(str(tmp_path / "x.gguf"))
    with pytest.raises(SeqschedError, match="not a folder"):
        resolve_model_path(str(tmp_path / "missing" / "folder"))


def test_unreachable_hub_id_is_a_clear_error() -> None:
    with pytest.raises(SeqschedError, match="Hub is not reachable"):
        load_model("nobody-here/no-such-model-xyz")


def test_auto_dtype_on_cpu() -> None:
    import torch

    assert pick_dtype(DType.AUTO, torch.device("cpu")) is torch.float32
    assert pick_dtype(DType.BFLOAT16, torch.device("cpu")) is torch.bfloat16
