"""Fixtures that start real things: a template database, stacks of API and worker processes."""

from __future__ import annotations

import logging
import os
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from redis import ConnectionPool, Redis
from redis.exceptions import RedisError

from tests.stack import Stack, build_template, create_database, database_url, drop_database, running_stack

if TYPE_CHECKING:
    from selenium import webdriver


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
    name = build_template()
    yield name
    drop_database(name)


@pytest.fixture(scope="session")
def stack(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The shared default stack: local provider, no faults, one API and two workers."""
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
    opened = []

    def start(**kwargs: object) -> Stack:
        context = running_stack(template_db, tmp_path / f"s{len(opened)}", **kwargs)  # type: ignore[arg-type]
        running = context.__enter__()
        opened.append(context)
        return running

    yield start
    for context in reversed(opened):
        context.__exit__(None, None, None)


# --- The whole run leaves others' data alone -------------------------------------------------------------------
# Before the first test, a key is written into every database of the Redis at REDIS_URL (when one answers) and a
# database is created on the PostgreSQL at DATABASE_URL, standing for a developer's own data. After the last test
# each must still be there, or the run fails: no test or fixture may flush, delete or drop what it did not create.

_SENTINEL = f"someone_elses_{uuid.uuid4().hex[:10]}"


def _machine_redis() -> Redis | None:
    client = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), socket_timeout=2)
    try:
        client.ping()
        return client
    except RedisError:
        return None


def pytest_sessionstart(session: pytest.Session) -> None:
    client = _machine_redis()
    if client is not None:
        for index in range(16):
            client.execute_command("SELECT", index)
            client.set(_SENTINEL, "precious")
        client.close()
    create_database(_SENTINEL)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    lost: list[str] = []
    pool = ConnectionPool.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), socket_timeout=2)
    try:
        for index in range(16):
            client = Redis(connection_pool=ConnectionPool(**{**pool.connection_kwargs, "db": index}))
            if client.get(_SENTINEL) != b"precious":
                lost.append(f"Redis db {index} key {_SENTINEL}")
            client.delete(_SENTINEL)
            client.close()
    except RedisError:
        pass  # no Redis at REDIS_URL: nothing was written there
    with psycopg.connect(database_url("postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_SENTINEL,)).fetchone() is None:
            lost.append(f"PostgreSQL database {_SENTINEL}")
    drop_database(_SENTINEL)
    if lost:
        print(f"\nDATA LOSS: the test run deleted data it did not create: {', '.join(lost)}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
