"""Configs without jsonargparse: `config_from_mapping` builds the same configs as the CLI parser from every recipe,
and `python -m seqsched_cli.recipe` applies dotted overrides (what the GPU script runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from seqsched.config import config_from_mapping, load_recipe, to_dict
from seqsched.errors import OptionError, SeqschedError
from seqsched.model_specs import Device, ModelConfig
from seqsched_cli.main import COMMANDS, load_attr
from seqsched_cli.recipe import apply_override, main, read_recipe
from serving.bench import BenchConfig, BenchStrategy
from serving.policy.scheduler import RecomputeMode

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted(path for path in (REPO / "recipes").glob("*/*.yaml") if path.parent.name != "accelerate")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_recipe_builds_the_same_config_without_jsonargparse(recipe: Path) -> None:
    by_name = {command.name: command for command in COMMANDS}
    entry = by_name.get(recipe.stem) or by_name[recipe.stem.split("-")[0]]  # bench-long.yaml fills bench
    config_type = load_attr(entry.config)
    ours = config_from_mapping(config_type, yaml.safe_load(recipe.read_text()))
    assert to_dict(ours) == to_dict(load_recipe(config_type, recipe))


def test_mapping_types_enums_tuples_nested_and_dicts() -> None:
    config = config_from_mapping(
        BenchConfig,
        {
            "strategies": ["vanilla", "fcr-oracle"],
            "paper_rows": [],
            "recompute": "continue",
            "vbs": {"50": 64},
            "budget_s": 30,
            "model": {"spec": "x", "device": "cpu", "random_init": "smollm2"},
        },
    )
    assert config.strategies == (BenchStrategy.VANILLA, BenchStrategy.FCR_ORACLE)
    assert config.recompute is RecomputeMode.CONTINUE and config.vbs == {50: 64}
    assert config.budget_s == 30.0 and isinstance(config.budget_s, float)
    assert config.model == ModelConfig(spec="x", device=Device.CPU, random_init="smollm2")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"limitt": 5}, "--limitt: no such option"),
        ({"limit": "many"}, "--limit: expected int"),
        ({"strategies": ["fast"]}, "--strategies: expected one of"),
        ({"model": {"device": "tpu"}}, "--model.device: expected one of"),
        ({"model": {"colour": 1}}, "--model.colour: no such option"),
        ({"engine": {"vllm": {"max_num_seqs": 0}}}, "--engine.vllm.max_num_seqs: must be >= 1"),
        ({"bin_width": 0}, "--bin_width: must be >= 1"),
        (
            {"paper_rows": ["fcr"], "strategies": ["vanilla", "fcr"]},
            "--paper_rows: needs --tune.data or --tune.lengths",
        ),
        ({"engine": {"replay": "x.jsonl", "batching": "continuous"}}, "--engine.replay: length replay runs static"),
        ({"tune": {"data": "a", "lengths": "b"}}, "--tune.lengths: give tune.data or tune.lengths"),
    ],
)
def test_mapping_errors_name_the_option(data: dict, message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("[", r"\[")):
        config_from_mapping(BenchConfig, data)


def test_overrides_reach_nested_fields_and_parse_as_yaml() -> None:
    data = {"model": {"spec": "a"}}
    for text in ("model.random_init=vicuna-7b", "count=200", "strategies=[vanilla, fcr]", "tune.lengths=null"):
        apply_override(data, text)
    assert data == {
        "model": {"spec": "a", "random_init": "vicuna-7b"},
        "count": 200,
        "strategies": ["vanilla", "fcr"],
        "tune": {"lengths": None},
    }
    with pytest.raises(SeqschedError, match="expected field=value"):
        apply_override(data, "count")
    with pytest.raises(SeqschedError, match="not a group"):
        apply_override(data, "count.x=1")


def test_runner_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nope", "x.yaml"]) == 2
    assert "no command 'nope'" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "missing.yaml")]) == 2
    assert "no such recipe file" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("limit: 0\n")
    assert read_recipe(recipe) == {"limit": 0}
    assert main(["bench", str(recipe)]) == 2
    assert "--limit: must be >= 1" in capsys.readouterr().err
