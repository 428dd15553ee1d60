"""Observability is a lower layer than the domain: its modules take plain ids, never domain types."""

from __future__ import annotations

import ast
from pathlib import Path

OBSERVABILITY = Path(__file__).resolve().parent.parent / "app" / "observability"


def domain_imports(source: str) -> list[str]:
    """The ``app.domain`` modules a module's source imports, at any depth (``TYPE_CHECKING`` blocks too)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[:2] == ["app", "domain"]]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[:2] == ["app", "domain"]:
                found.append(node.module)
            elif parts == ["app"]:
                found += [f"app.{alias.name}" for alias in node.names if alias.name == "domain"]
    return found


def test_the_check_sees_every_spelling_of_a_domain_import() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import app.domain.processing\n"
        "from app import domain\n"
        "if TYPE_CHECKING:\n"
        "    from app.domain.processing import ClaimedGeneration\n"
        "def f():\n"
        "    from app.domain import metrics\n"
        "from app.errors import ErrorType\n"
    )
    assert domain_imports(source) == [
        "app.domain.processing", "app.domain", "app.domain.processing", "app.domain",
    ]


def test_no_observability_module_imports_the_domain() -> None:
    modules = sorted(OBSERVABILITY.glob("*.py"))
    assert modules, OBSERVABILITY
    offending = {path.name: found for path in modules if (found := domain_imports(path.read_text()))}
    assert offending == {}
