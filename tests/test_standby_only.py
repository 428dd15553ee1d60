"""A multi-host ``DATABASE_URL`` with ``target_session_attrs=read-write`` while only the standby answers (the
primary crashed, the standby not promoted yet): the API starts, readiness answers 503 saying why
(``ReadOnlyDatabase``, not the pool's timeout), and it is ready once the standby is promoted, without a restart."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import API_PREFIX
from tests.replication import StreamingPostgres
from tests.stack import JWT_SECRET, Process, claim_redis_db, free_port, prepare_database, redis_url, release_redis_db
from tests.support.monitoring import wait_until

pytestmark = pytest.mark.drill


def test_an_api_started_with_only_the_standby_up_says_why_it_is_not_ready(tmp_path: Path) -> None:
    servers = StreamingPostgres().start()
    redis_index = claim_redis_db()
    api: Process | None = None
    try:
        servers.create_database("posegen_standby_only")
        database_url = servers.url("posegen_standby_only")
        prepare_database(database_url)
        servers.stop_primary()
        port = free_port()
        api = Process(["api", "--port", str(port)],
                      {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url(redis_index),
                       "JWT_SECRET": JWT_SECRET, "POSEGEN_DATA_DIR": str(tmp_path / "data")}, tmp_path / "api.log")

        def database_check() -> tuple[int, dict[str, Any]] | None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}{API_PREFIX}/health", timeout=5)
            except httpx.HTTPError:
                return None
            return answer.status_code, answer.json()["checks"]["database"]

        status, database = wait_until("the API answering", database_check, 30)
        not_ready = [wait_until("an answer", database_check, 5) for _ in range(5)]
        assert all(answer == (503, {"status": "disconnected", "error": "ReadOnlyDatabase"}) for answer in not_ready), \
            (status, database, not_ready, api.output()[-2000:])
        servers.promote_standby()
        wait_until("readiness after the promotion", lambda: (database_check() or (0, {}))[0] == 200, 30, api.output)
    finally:
        if api is not None:
            api.stop()
        release_redis_db(redis_index)
        servers.stop()
