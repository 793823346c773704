"""The package's shape: layers with small modules, and methods known only to themselves."""

from __future__ import annotations

import ast
from pathlib import Path

import softprompt
from softprompt.methods import preset_classes

PACKAGE = Path(softprompt.__file__).parent
MAX_MODULE_LINES = 400


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_root_holds_only_the_public_api_and_errors():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "errors.py"]


def test_no_module_is_longer_than_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def code_strings(path: Path) -> set[str]:
    """String constants a module's code uses (docstrings left out: prose may name a method)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings}


def code_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} | \
        {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)} | \
        {alias.name.split(".")[-1] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom | ast.Import)
         for alias in node.names}


def test_only_the_methods_themselves_name_a_method():
    """Interop, the benchmark, artifacts, mixed batches and inspection read the method classes' declarations."""
    presets = preset_classes()
    method_names = set(presets)
    class_names = {cls.__name__ for cls in presets.values()} | {cls.__module__.rsplit(".", 1)[-1]
                                                                 for cls in presets.values()}
    outside = [p for p in modules() if p.relative_to(PACKAGE).parts[0] != "methods"]
    naming = {}
    for path in outside:
        found = (code_strings(path) & method_names) | (code_names(path) & class_names)
        if found:
            naming[str(path.relative_to(PACKAGE))] = sorted(found)
    assert not naming
