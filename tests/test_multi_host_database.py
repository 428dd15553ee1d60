"""A multi-host ``DATABASE_URL`` whose first server is gone, as after a PostgreSQL failover whose old primary's
host went down: its packets unanswered, each connection to it costs libpq's whole ``connect_timeout``. A process
pays that once, not on every connection: a worker (whose work-horses connect once per generation) runs
generations back to back, not one per timeout."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from app.connections import pg_connect
from tests.stack import Stack, database_url, running_stack

POSES = ["pose_standing_confident"]
# A connection to the gone server takes the worker's connect_timeout (5 s); with it tried first on every
# connection, the generations below would take at least this long apiece.
WORKER_CONNECT_TIMEOUT_SECONDS = 5


@pytest.fixture
def gone_server() -> Iterator[int]:
    """A port that accepts connections and never answers, as a host whose packets are dropped does for libpq
    (it waits for the server's answer until connect_timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(100)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def gone_first(url: str, port: int) -> str:
    """``url`` with a first server on ``port`` before its own, and ``target_session_attrs=read-write``."""
    parts = urlsplit(url)
    user, _, server = parts.netloc.rpartition("@")
    return urlunsplit((parts.scheme, f"{user}@127.0.0.1:{port},{server}", parts.path,
                       "target_session_attrs=read-write", ""))


def test_a_process_waits_for_the_gone_server_once(gone_server: int) -> None:
    url = gone_first(database_url("postgres"), gone_server)
    started = time.monotonic()
    pg_connect(url, autocommit=True, connect_timeout=2).close()
    first = time.monotonic() - started
    started = time.monotonic()
    for _ in range(3):
        pg_connect(url, autocommit=True, connect_timeout=2).close()
    assert first >= 1.5 and time.monotonic() - started < 1.5, (first, time.monotonic() - started)


def test_a_worker_runs_generations_back_to_back_when_the_first_server_is_gone(
        template_db: str, tmp_path: Path, gone_server: int) -> None:
    with running_stack(template_db, tmp_path, workers=0) as stack:
        worker = stack.start_worker(DATABASE_URL=gone_first(stack.database_url, gone_server))
        stack.wait_workers_ready(1)
        user = stack.new_user(credits=1000)
        _finish(stack, user)  # the worker's first connections wait for the gone server
        started = time.monotonic()
        for _ in range(3):
            _finish(stack, user)
        took = time.monotonic() - started
        assert took < WORKER_CONNECT_TIMEOUT_SECONDS, f"3 generations took {took:.1f} s\n{worker.output()}"


def _finish(stack: Stack, user: str) -> None:
    answer = stack.create_generation(user, POSES)
    assert answer.status_code == 202, answer.text
    body = stack.wait_finished(user, answer.json()["generationId"], timeout=60)
    assert body["status"] == "completed", body
