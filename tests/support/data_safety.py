"""The whole run leaves others' data alone: a pytest plugin (loaded by tests/conftest.py).

Once collection is done, unless every collected test is a unit test (under ``tests/unit/``, which start no
service), a key is written into every database of the Redis at REDIS_URL (when one answers) and a database is
created on the PostgreSQL at DATABASE_URL, standing for a developer's own data. After the last test each must
still be there, or the run fails: no test or fixture may flush, delete or drop what it did not create. A
unit-only session (``make test-fast``) and ``--collect-only`` connect to nothing.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

UNIT_TESTS = Path(__file__).resolve().parent.parent / "unit"
_SENTINEL = f"someone_elses_{uuid.uuid4().hex[:10]}"
_PLANTED = pytest.StashKey[bool]()


def needs_services(test_paths: Iterable[Path], unit_root: Path = UNIT_TESTS) -> bool:
    """Whether a session collecting tests from ``test_paths`` (the files of its items) may start services:
    True when any file lies outside ``unit_root``. An empty session needs none."""
    root = unit_root.resolve()
    return any(not Path(path).resolve().is_relative_to(root) for path in test_paths)


def _redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def _worker(config: pytest.Config) -> bool:
    """Whether this is a pytest-xdist worker: the controller plants and checks, once for the whole run."""
    return hasattr(config, "workerinput")


def _plant(config: pytest.Config) -> None:
    from redis import Redis
    from redis.exceptions import RedisError

    from tests.stack import create_database

    client = Redis.from_url(_redis_url(), socket_timeout=2)
    try:
        client.ping()
    except RedisError:
        client = None  # no Redis at REDIS_URL: nothing to guard there
    if client is not None:
        for index in range(16):
            client.execute_command("SELECT", index)
            client.set(_SENTINEL, "precious")
        client.close()
    create_database(_SENTINEL)
    config.stash[_PLANTED] = True


def pytest_collection_finish(session: pytest.Session) -> None:
    if _worker(session.config) or session.config.option.collectonly:
        return
    if needs_services(item.path for item in session.items):
        _plant(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Under pytest-xdist (``make test``) the controller collects nothing itself: it plants once the first worker
    reports what it collected, before any test runs."""
    config = node.config
    if config.stash.get(_PLANTED, False) or config.option.collectonly:
        return
    if needs_services(Path(config.rootpath, node_id.split("::")[0]) for node_id in ids):
        _plant(config)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _worker(session.config) or not session.config.stash.get(_PLANTED, False):
        return
    import psycopg
    from redis import ConnectionPool, Redis
    from redis.exceptions import RedisError

    from tests.stack import database_url, drop_database

    lost: list[str] = []
    pool = ConnectionPool.from_url(_redis_url(), socket_timeout=2)
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
