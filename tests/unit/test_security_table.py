"""The Security table (docs/security.md) names, for each protection, the tests that prove it: each must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _security_section() -> str:
    return (ROOT / "docs" / "security.md").read_text()


def test_every_test_the_security_table_names_exists() -> None:
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", _security_section())
    assert len(named) >= 10, named
    missing = []
    for path, name in named:
        tree = ast.parse((ROOT / path).read_text())
        tests = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
        if name not in tests:
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/security.md's table names tests that do not exist: {missing}"


def test_every_row_of_the_security_table_names_a_test() -> None:
    rows = [row for row in _security_section().splitlines()
            if row.startswith("| ") and not row.startswith("| protection")]
    assert rows
    for row in rows:
        assert re.search(r"`tests/[\w/]+\.py::\w+`", row.split(" | ")[-1]), f"a protection without its test: {row[:80]}"
