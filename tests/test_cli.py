"""The `seqsched` dispatcher: help, lazy imports, one-line errors, every recipe loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.cli import COMMANDS, load_attr, main, usage
from serving.config import load_recipe, parse_config, to_dict
from serving.generate import GenerateConfig
from serving.llm import Device

REPO = Path(__file__).resolve().parent.parent
# recipes/accelerate/ holds `accelerate launch --config_file` files, not seqsched command configs.
RECIPES = sorted(path for path in (REPO / "recipes").glob("*/*.yaml") if path.parent.name != "accelerate")


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("label", "train", "eval", "register", "plan", "serve", "bench", "generate"):
        assert f"  {name} " in out
    assert out == usage() + "\n"


def test_dispatcher_does_not_import_torch() -> None:
    code = "import sys, serving.cli; serving.cli.main(['--help']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'nonsense'" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": 5}\n')
    assert main(["generate", "--input", str(bad), "--model.spec", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: field 'prompt' must be a string, got int" in err and err.count("\n") == 1


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n')
    from serving.errors import InputError

    with pytest.raises(InputError):
        main(["--debug", "generate", "--input", str(bad)])


def test_config_overrides_recipe() -> None:
    recipe = REPO / "recipes" / "smollm2-cpu" / "generate.yaml"
    config = parse_config(GenerateConfig, ["--config", str(recipe), "--batch_size", "4", "--model.device", "auto"], "t")
    assert config.batch_size == 4 and config.max_new_tokens == 512
    assert config.model.device is Device.AUTO and config.model.spec == "smollm2"
    assert json.loads(json.dumps(to_dict(config)))["model"]["device"] == "auto"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_recipe_loads(recipe: Path) -> None:
    by_name = {entry.name: entry for entry in COMMANDS}
    entry = by_name.get(recipe.stem)
    assert entry is not None, f"{recipe}: no command named {recipe.stem!r} to fill"
    assert entry.config is not None, f"command {recipe.stem!r} takes no recipe"
    config_type = load_attr(entry.config)
    config = load_recipe(config_type, recipe)
    assert isinstance(config, config_type)


def test_recipes_exist() -> None:
    assert RECIPES, "recipes/ holds at least one recipe"
