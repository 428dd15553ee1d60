"""The API never imports the worker package: what both need (the queue, connection set-up) lives below them."""

from __future__ import annotations

import ast
from pathlib import Path

API = Path(__file__).resolve().parent.parent / "app" / "api"


def imported_modules(source: str) -> list[str]:
    """Every module a source imports, at any depth (lazy imports in functions too), as dotted names;
    ``from app import worker`` counts as ``app.worker``."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def worker_imports(source: str) -> list[str]:
    return [name for name in imported_modules(source) if name == "app.worker" or name.startswith("app.worker.")]


def test_the_check_sees_every_form_of_import() -> None:
    assert worker_imports("from app.worker.queue import make_queue") == [
        "app.worker.queue", "app.worker.queue.make_queue"]
    assert worker_imports("def f():\n    import app.worker.jobs\n") == ["app.worker.jobs"]
    assert worker_imports("from app import worker") == ["app.worker"]
    assert worker_imports("from app.queue import make_queue\nimport app.workers_elsewhere") == []


def test_no_api_module_imports_the_worker_package() -> None:
    modules = sorted(API.rglob("*.py"))
    assert len(modules) > 10, modules
    offenders = {str(path.relative_to(API)): found for path in modules
                 if (found := worker_imports(path.read_text(encoding="utf-8")))}
    assert offenders == {}
