"""Fixtures that start real things: a template database, stacks of API and worker processes.

Nothing here connects or starts anything until a test asks for a fixture, so a unit-only session
(``tests/unit/``, ``make test-fast``) needs no service; the data-safety check is the plugin
tests/support/data_safety.py, which skips itself for such a session."""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium import webdriver

    from tests.stack import Stack

pytest_plugins = ["tests.support.data_safety"]


@pytest.fixture(autouse=True)
def process_wide_logging_restored() -> Iterator[None]:
    """A test that calls ``configure_logging`` in this process (to read entries from a StringIO) leaves the
    process-wide hooks it installs as they were: pytest's own thread-exception hook, warnings capture."""
    hooks = sys.excepthook, threading.excepthook, logging.lastResort, warnings.showwarning
    yield
    logging.captureWarnings(False)
    sys.excepthook, threading.excepthook, logging.lastResort, warnings.showwarning = hooks


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    from tests.stack import build_template, drop_database

    name = build_template()
    yield name
    drop_database(name)


@pytest.fixture(scope="session")
def stack(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The shared default stack: local provider, no faults, one API and two workers."""
    from tests.stack import running_stack

    with running_stack(template_db, tmp_path_factory.mktemp("stack"), workers=2) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """A headless Chromium (tests/browser.py) for one test."""
    from tests.browser import headless_chromium

    with headless_chromium() as session:
        yield session


@pytest.fixture
def fresh_stack(template_db: str, tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    """Start a stack of one's own with extra environment: ``fresh_stack(workers=1, POSEGEN_FAULTS=...)``."""
    from tests.stack import running_stack

    opened = []

    def start(**kwargs: object) -> Stack:
        context = running_stack(template_db, tmp_path / f"s{len(opened)}", **kwargs)  # type: ignore[arg-type]
        running = context.__enter__()
        opened.append(context)
        return running

    yield start
    for context in reversed(opened):
        context.__exit__(None, None, None)
