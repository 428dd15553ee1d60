"""A primary fenced read-only without a restart (``default_transaction_read_only = on`` and a reload, as a
failover manager fences a demoted primary, or a standby reached by a pooled connection): the API's pooled
connections must not stay on it, its writes are an outage (503, never 500), and readiness says not ready.

A session-level ``SET default_transaction_read_only = on`` stands in for the reload here: the server reports
the change the same way (a ``ParameterStatus`` message), without touching any server's configuration.
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from litestar import Litestar, post
from litestar.testing import TestClient

from app.api.checkout import CheckoutCheck, read_only_server
from app.api.error_responses import EXCEPTION_HANDLERS
from tests.stack import create_database, drop_database


@pytest.fixture
def empty_database_url() -> object:
    name = f"posegen_test_ro_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    yield url
    drop_database(name)


def test_a_pooled_connection_to_a_server_gone_read_only_is_dropped_at_checkout(empty_database_url: str) -> None:
    async def run() -> tuple[bool, bool, bool, bool]:
        conn = await psycopg.AsyncConnection.connect(empty_database_url, autocommit=True)
        check = CheckoutCheck()
        await check(conn)  # a read-write server: kept
        assert check.read_only_at is None
        before = read_only_server(conn)
        await conn.execute("SET default_transaction_read_only = on")
        row = await (await conn.execute(
            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool")).fetchone()
        after = read_only_server(conn)
        try:
            await check(conn)
            refused = False
        except psycopg.OperationalError:
            refused = True
        return before, after, bool(row and row[0]), refused and conn.closed and check.met_read_only_within(5)

    before, after, health_says_read_only, dropped = asyncio.run(run())
    assert (before, after) == (False, True)
    assert health_says_read_only  # the readiness query (app/api/health.py) sees the fence
    assert dropped


def test_a_write_refused_by_a_read_only_server_is_answered_503() -> None:
    @post("/write", sync_to_thread=False)
    def write() -> None:
        raise psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")

    with TestClient(Litestar([write], exception_handlers=EXCEPTION_HANDLERS)) as client:  # type: ignore[arg-type]
        answer = client.post("/write")
    assert answer.status_code == 503, answer.text
    assert answer.headers.get("retry-after")
