"""Only the settings object reads the environment (STYLE.md: one settings object, read once, passed down).

Moved from tests/test_settings.py so that ``make test-fast`` runs it; it now follows ``os`` however it was
imported (``from os import environ, getenv``, ``import os as o``) and covers ``alerts/`` as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("app", "exporter", "alerts", "dashboards")


def environment_reads(tree: ast.Module) -> list[int]:
    """Lines of ``tree`` that read a variable from the environment: ``os.getenv(...)``, ``os.environ.get(...)``,
    ``os.environ[...]`` read, ``... in os.environ``, under whatever names ``os``, ``environ`` and ``getenv`` were
    imported as (writes and whole copies are not reads)."""
    modules, environs, getenvs = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.asname or alias.name for alias in node.names if alias.name == "os"}
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            environs |= {alias.asname or alias.name for alias in node.names if alias.name == "environ"}
            getenvs |= {alias.asname or alias.name for alias in node.names if alias.name == "getenv"}

    def is_environ(node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id in environs
        return (isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name)
                and node.value.id in modules)

    def is_getenv(node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id in getenvs
        return (isinstance(node, ast.Attribute) and node.attr == "getenv" and isinstance(node.value, ast.Name)
                and node.value.id in modules)

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            read = is_getenv(func) or (isinstance(func, ast.Attribute) and func.attr == "get"
                                       and is_environ(func.value))
        elif isinstance(node, ast.Subscript):
            read = isinstance(node.ctx, ast.Load) and is_environ(node.value)
        elif isinstance(node, ast.Compare):
            read = any(isinstance(op, ast.In | ast.NotIn) and is_environ(right)
                       for op, right in zip(node.ops, node.comparators, strict=True))
        else:
            read = False
        if read:
            lines.append(node.lineno)
    return lines


def test_only_the_settings_object_reads_the_environment() -> None:
    sources = [path for folder in FOLDERS for path in (ROOT / folder).rglob("*.py") if path.name != "settings.py"]
    reads = [f"{path.relative_to(ROOT)}:{line}" for path in sources
             for line in environment_reads(ast.parse(path.read_text("utf-8")))]
    assert reads == [], reads


@pytest.mark.parametrize("source", [
    "import os\nos.getenv('X')",
    "import os\nos.environ.get('X')",
    "import os\nos.environ['X']",
    "import os\n'X' in os.environ",
    "import os as o\no.environ.get('X')",
    "from os import environ\nenviron.get('X')",
    "from os import environ as env\nenv['X']",
    "from os import getenv\ngetenv('X')",
])
def test_a_read_is_found_however_os_was_imported(source: str) -> None:
    assert environment_reads(ast.parse(source)) == [2]


def test_writes_and_whole_copies_are_not_reads() -> None:
    source = "import os\nos.environ['X'] = '1'\nenv = {**os.environ, 'Y': '2'}\ndict(os.environ)"
    assert environment_reads(ast.parse(source)) == []
