"""Benchmark scripts run through the installed package: no sys.path edits, no imports of the test suite."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").rglob("*.py"))


def test_there_are_benchmark_scripts() -> None:
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_a_benchmark_script_imports_the_package_as_installed(script: Path) -> None:
    tree = ast.parse(script.read_text(), str(script))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            names = []
        assert not any(name == "tests" or name.startswith("tests.") for name in names), f"{script}: imports tests"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            dotted = f"{getattr(node.value.value, 'id', '')}.{node.value.attr}.{node.attr}"
            assert not dotted.startswith("sys.path."), f"{script}:{node.lineno}: edits sys.path"
