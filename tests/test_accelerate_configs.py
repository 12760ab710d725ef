"""Every accelerate launch config under recipes/accelerate/ parses with accelerate's own loader."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "recipes" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_accelerate_config_loads(path: Path) -> None:
    config = load_config_from_file(str(path))
    assert config.num_processes >= 1
    if config.num_processes > 1:
        assert config.distributed_type.value == "MULTI_GPU" and config.mixed_precision == "bf16"


def test_configs_exist() -> None:
    assert {path.name for path in CONFIGS} >= {"cpu.yaml", "multi-gpu-4.yaml"}
