"""The layout's rules (docs/architecture.md), checked on the source itself.

Imports run one way: heads <- fruitcnn <- visualize <- app <- bench <- the command
lines; no command line imports another; an import hidden inside a function says why on
its line or the line above; the command lines' --help loads no TensorFlow; a module
longer than LONG_FILE lines says at its top why it is one file.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lower floors never import higher ones.
FLOORS = {"heads": 0, "fruitcnn": 1, "visualize": 2, "app": 3, "bench": 4}
COMMANDS = ("train", "explain", "report", "study")
COMMAND_FLOOR = 5
# Modules longer than this say at the top of their docstring why they are one file.
LONG_FILE = 550
LONG_FILE_MARKER = "One file:"


def _sources() -> list[Path]:
    found = [ROOT / f"{name}.py" for name in COMMANDS]
    for package in FLOORS:
        found += sorted((ROOT / package).rglob("*.py"))
    return found


def _floor(module: str) -> int | None:
    top = module.split(".")[0]
    if top in COMMANDS:
        return COMMAND_FLOOR
    return FLOORS.get(top)


def _imports(path: Path):
    """``(module imported, line, inside a function)`` of every import of this project."""
    tree = ast.parse(path.read_text())
    inner = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner.update(id(sub) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module]
        else:
            continue
        for name in names:
            if _floor(name) is not None:
                yield name, node.lineno, id(node) in inner


def _own_floor(path: Path) -> int:
    relative = path.relative_to(ROOT)
    return COMMAND_FLOOR if len(relative.parts) == 1 else FLOORS[relative.parts[0]]


def test_the_rules_see_every_module():
    names = {path.relative_to(ROOT).as_posix() for path in _sources()}
    assert {
        "train.py",
        "heads/base.py",
        "fruitcnn/training/loop.py",
        "visualize/methods.py",
        "app/report/__init__.py",
    } <= names
    assert len(names) > 60


def test_imports_run_one_way():
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _sources()
        for module, line, _ in _imports(path)
        if _floor(module) > _own_floor(path)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_command_line_imports_another():
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _sources()
        for module, line, _ in _imports(path)
        if module.split(".")[0] in COMMANDS
    ]
    assert not found, "\n".join(found)


def test_imports_inside_functions_say_why():
    """An import inside a function says why: on its line or the one above, or (for a
    module whose imports are all deferred) in the module docstring, which names the
    --help start-up time it protects. The command lines' reason is tested below."""
    silent = []
    for path in _sources():
        text = path.read_text()
        if _own_floor(path) == COMMAND_FLOOR or "--help" in (ast.get_docstring(ast.parse(text)) or ""):
            continue
        lines = text.splitlines()
        for module, line, inside in _imports(path):
            if inside and "#" not in lines[line - 1] and not lines[line - 2].strip().startswith("#"):
                silent.append(f"{path.relative_to(ROOT)}:{line} imports {module} inside a function")
    assert not silent, "\n".join(silent)


def test_help_loads_no_tensorflow():
    """The command lines' parsers and flag names load without TensorFlow, and so does
    bench/run.py's (``--help`` in a fraction of a second instead of the seconds
    TensorFlow takes to import)."""
    code = (
        "import sys\n"
        f"for name in {COMMANDS!r}:\n"
        "    __import__(name).build_parser()\n"
        "print(sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))\n"
    )
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
    bench = (
        "import runpy, sys\n"
        "runpy.run_path('bench/run.py', run_name='bench_run')['build_parser']()\n"
        "print(sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", bench], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]", f"bench/run.py --help loads {found.stdout.strip()}"


@pytest.mark.parametrize("path", _sources(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_long_modules_say_why_they_are_one_file(path):
    text = path.read_text()
    if text.count("\n") <= LONG_FILE:
        return
    docstring = ast.get_docstring(ast.parse(text)) or ""
    assert LONG_FILE_MARKER in docstring, (
        f"{path.relative_to(ROOT)} has {text.count(chr(10))} lines: split it into a package whose files "
        f"read as its parts, or say in its docstring why it is one file ('{LONG_FILE_MARKER} ...')"
    )
