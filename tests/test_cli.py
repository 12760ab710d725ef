"""The `seqsched` CLI: every command through the library parser, --help on each, dashed and underscored options
alike, one-line errors naming the option, lazy imports, and every recipe loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seqsched.config import load_recipe, parse_config, to_dict
from seqsched.errors import InputError
from seqsched.model_specs import Device
from seqsched_cli.main import COMMANDS, build_parser, load_attr, main
from serving.generate_command import GenerateConfig

REPO = Path(__file__).resolve().parent.parent
# recipes/accelerate/ holds `accelerate launch --config_file` files, not seqsched command configs.
RECIPES = sorted(path for path in (REPO / "recipes").glob("*/*.yaml") if path.parent.name != "accelerate")


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("label", "train", "eval", "register", "plan", "serve", "bench", "generate", "demo"):
        assert f"    {name} " in out


@pytest.mark.parametrize("command", [entry.name for entry in COMMANDS])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command.split(), "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: seqsched") and command.split()[-1] in out.splitlines()[0] and "--config" in out


def test_every_option_takes_dashes_and_underscores() -> None:
    parser = build_parser()
    checked = 0
    for entry in COMMANDS:
        words = entry.name.split()
        sub = parser._subcommands_action._name_parser_map[words[0]]
        if len(words) == 2:
            sub = sub._subcommands_action._name_parser_map[words[1]]
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and "_" in option:
                    assert option.replace("_", "-") in action.option_strings, (entry.name, option)
                    checked += 1
    assert checked > 100


def test_dashed_and_underscored_spellings_parse_alike(tmp_path: Path) -> None:
    from serving.serve_command import ServeConfig

    one = parse_config(
        ServeConfig, ["--bin-width", "25", "--margin-tokens", "5", "--engine.evict-finished", "true"], "t"
    )
    two = parse_config(ServeConfig, ["--bin_width", "25", "--margin_tokens=5", "--engine.evict_finished", "true"], "t")
    assert one == two and one.bin_width == 25 and one.engine.evict_finished


def test_dispatcher_does_not_import_torch() -> None:
    code = "import sys, seqsched_cli.main; seqsched_cli.main.main(['--help']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nonsense" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": 5}\n')
    assert main(["generate", "--input", str(bad), "--model.spec", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: field 'prompt' must be a string, got int" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["plan", "--lengths", "x", "--bin_width", "0"], "--bin_width"),
        (["plan", "--lengths", "x", "--bin-width", "abc"], "--bin_width"),
        (["serve", "--input", "x", "--vbs", "{50: 0}"], "--vbs"),
        (["serve", "--input", "x", "--model.device", "tpu"], "--model.device"),
        (["label", "--data", "x", "--out", "y", "--temperatures", "0,hot"], "--temperatures"),
    ],
)
def test_bad_option_values_name_the_option(argv: list[str], option: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n')
    with pytest.raises(InputError):
        main(["--debug", "generate", "--input", str(bad)])
    with pytest.raises(InputError):
        main(["generate", "--input", str(bad), "--debug"])


def test_config_overrides_recipe() -> None:
    recipe = REPO / "recipes" / "smollm2-cpu" / "generate.yaml"
    config = parse_config(GenerateConfig, ["--config", str(recipe), "--batch-size", "4", "--model.device", "auto"], "t")
    assert config.batch_size == 4 and config.max_new_tokens == 512
    assert config.model.device is Device.AUTO and config.model.spec == "smollm2"
    assert json.loads(json.dumps(to_dict(config)))["model"]["device"] == "auto"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_recipe_loads(recipe: Path) -> None:
    by_name = {entry.name: entry for entry in COMMANDS}
    # A recipe is named after the command it fills, optionally with a variant (bench-long.yaml fills bench).
    entry = by_name.get(recipe.stem) or by_name.get(recipe.stem.split("-")[0])
    assert entry is not None, f"{recipe}: no command named {recipe.stem!r} to fill"
    config_type = load_attr(entry.config)
    config = load_recipe(config_type, recipe)
    assert isinstance(config, config_type)


def test_recipes_exist() -> None:
    assert RECIPES, "recipes/ holds at least one recipe"
