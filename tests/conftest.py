"""Fixtures that start real things: a template database, stacks of API and worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack, build_template, drop_database, running_stack


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    name = build_template()
    yield name
    drop_database(name)


@pytest.fixture(scope="session")
def stack(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The shared default stack: local provider, no faults, one API and two workers."""
    with running_stack(template_db, tmp_path_factory.mktemp("stack"), workers=2) as running:
        yield running


@pytest.fixture
def fresh_stack(template_db: str, tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    """Start a stack of one's own with extra environment: ``fresh_stack(workers=1, POSEGEN_FAULTS=...)``."""
    opened = []

    def start(**kwargs: object) -> Stack:
        context = running_stack(template_db, tmp_path / f"s{len(opened)}", **kwargs)  # type: ignore[arg-type]
        running = context.__enter__()
        opened.append(context)
        return running

    yield start
    for context in reversed(opened):
        context.__exit__(None, None, None)
