"""Imports follow the flow: featurestore <- streaming <- monitors <- fraud_example, and the
Feast definitions import none of the upper packages. The upper packages are reached only through
the composition root, featurestore/plugins.py, by entry points; these tests check both halves."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> the packages above it, which it must not import
FORBIDDEN = {
    "featurestore": {"streaming", "monitors", "fraud_example"},
    "streaming": {"monitors", "fraud_example"},
    "monitors": {"fraud_example"},
    "feature_repo": {"streaming", "monitors", "fraud_example"},
}
PLUGINS = {
    "streaming": "streaming.plugin",
    "monitors": "monitors.plugin",
    "fraud_example": "fraud_example.plugin",
}


def imported_modules(tree: ast.Module, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in `tree`, at any depth: `import`, `from ... import`
    (relative ones resolved against `module`) and `importlib.import_module` / `__import__` calls
    with a literal name."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module])))
            else:  # `from . import x`: each name is a module of the base package
                found += [(node.lineno, ".".join([*base, alias.name])) for alias in node.names]
        elif isinstance(node, ast.Call) and node.args:
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else (
                function.id if isinstance(function, ast.Name) else None
            )
            argument = node.args[0]
            if name in ("import_module", "__import__") and isinstance(argument, ast.Constant) \
                    and isinstance(argument.value, str):
                found.append((node.lineno, argument.value))
    return found


def violations(source: str, path: str, module: str, is_package: bool = False) -> list[str]:
    """`path:line: <module> imports <name>` for each import of a package above `module`'s."""
    above = FORBIDDEN.get(module.split(".")[0], set())
    tree = ast.parse(source, filename=path)
    return [
        f"{path}:{line}: {module} imports {name}"
        for line, name in imported_modules(tree, module, is_package)
        if name.split(".")[0] in above
    ]


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def test_imports_follow_the_flow() -> None:
    found: list[str] = []
    files = [path for package in FORBIDDEN for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 50  # the walk found the packages
    for path in files:
        module, is_package = _module_name(path)
        found += violations(path.read_text(), str(path.relative_to(ROOT)), module, is_package)
    assert not found, "imports against the flow:\n" + "\n".join(found)


def test_the_checker_reports_each_kind_of_import_against_the_flow() -> None:
    source = """\
import json
import monitors.capture
from streaming.worker import StreamWorker
from featurestore.settings import Settings


def later():
    from fraud_example import demo
    import importlib
    importlib.import_module("monitors.api")
    importlib.import_module("featurestore.db")
"""
    found = violations(source, "featurestore/bad.py", "featurestore.bad")
    assert found == [
        "featurestore/bad.py:2: featurestore.bad imports monitors.capture",
        "featurestore/bad.py:3: featurestore.bad imports streaming.worker",
        "featurestore/bad.py:8: featurestore.bad imports fraud_example",
        "featurestore/bad.py:10: featurestore.bad imports monitors.api",
    ]
    # The same imports are allowed one floor up, except what is above that floor.
    assert violations(source, "monitors/ok.py", "monitors.ok") == [
        "monitors/ok.py:8: monitors.ok imports fraud_example"
    ]
    # A relative import is resolved before it is judged: these are featurestore's own modules.
    relative = "from .monitors import routes\nfrom .. import streaming\n"
    assert violations(relative, "featurestore/api/x.py", "featurestore.api.x") == []


def test_every_plugin_is_registered_and_adds_its_commands() -> None:
    import typer

    from featurestore import plugins
    from featurestore.cli import app

    assert plugins.discover() == PLUGINS
    assert [plugin.name for plugin in plugins.loaded()] == sorted(PLUGINS)
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert {"stream", "monitors", "example"} <= set(commands)
    assert set(commands["example"].commands) == {"demo", "generate", "entities", "produce"}
    # The installed script, as a user runs it.
    script = Path(sys.executable).parent / "featurestore"
    shown = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    listed = {line.strip("│ ").split(" ")[0] for line in shown.stdout.splitlines()}
    assert {"stream", "monitors", "example"} <= listed, shown.stdout


def test_a_plugin_that_cannot_be_imported_is_an_error_naming_it() -> None:
    from featurestore import plugins

    with pytest.raises(plugins.PluginError, match=r"plugin 'broken' \(no_such_module_here,"):
        plugins.load("broken", "no_such_module_here")
