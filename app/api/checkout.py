"""The API pool's check of each connection it hands out (psycopg_pool's ``check``): a connection the server
closed, or whose server went read-only, is dropped and replaced, and the check remembers when it last met a
read-only server, so readiness can name why the pool had no connection to give."""

from __future__ import annotations

import select
import time
from typing import Any

import psycopg
from psycopg import AsyncConnection


def read_only_server(conn: AsyncConnection[Any]) -> bool:
    """Whether the server last reported itself read-only (PostgreSQL 14+ reports ``in_hot_standby`` and
    ``default_transaction_read_only`` as they change, without a query): a connection pooled before its
    server was demoted or fenced read-only would fail every write. libpq's ``target_session_attrs=read-write``
    checks the same at connect, so its replacement goes to the read-write server."""
    status = conn.info.parameter_status
    return "on" in (status("in_hot_standby"), status("default_transaction_read_only"))


# libpq's words when target_session_attrs=read-write (or primary) meets a standby or a read-only primary.
_READ_ONLY_REFUSALS = ("session is read-only", "server is in hot standby mode")


class CheckoutCheck:
    """Whether the server closed an idle connection (a terminated backend, a restart) shows without a round
    trip: its socket has the server's last message or the end of the stream waiting. An empty query per
    checkout, psycopg's own check, cost a fifth of GET /generations/{id} throughput. A closed connection, or
    one to a read-only server (:func:`read_only_server`), fails the check (``psycopg.OperationalError``) and
    the pool replaces it.

    ``read_only_at``: when (``time.monotonic()`` seconds) a connection was last dropped for a read-only
    server, None if never. A pool whose every server is read-only (a ``DATABASE_URL`` naming a standby alone)
    drops each connection it opens and times out; this says why."""

    def __init__(self) -> None:
        self.read_only_at: float | None = None
        self.refused_read_only = False

    def connection_class(self) -> type[AsyncConnection[Any]]:
        """The pool's connection class (psycopg_pool's ``connection_class``): it notes in ``refused_read_only``
        whether the pool's last connection attempt failed because libpq found only read-only servers
        (``target_session_attrs=read-write`` or ``primary`` while no primary answers: the pool never gets a
        connection to check, and readiness would only say it timed out)."""
        check = self

        class NotingConnection(AsyncConnection[Any]):
            @classmethod
            async def connect(cls, *args: Any, **kwargs: Any) -> Any:
                try:
                    conn = await super().connect(*args, **kwargs)
                except psycopg.OperationalError as exc:
                    check.refused_read_only = any(words in str(exc) for words in _READ_ONLY_REFUSALS)
                    raise
                check.refused_read_only = False
                return conn

        return NotingConnection

    async def __call__(self, conn: AsyncConnection[Any]) -> None:
        if not conn.closed and not select.select([conn.fileno()], [], [], 0)[0]:
            if not read_only_server(conn):
                return
            self.read_only_at = time.monotonic()
            await conn.close()
            raise psycopg.OperationalError("the server went read-only (a demoted or fenced primary)")
        await conn.close()
        raise psycopg.OperationalError("connection closed by the server")

    def met_read_only_within(self, seconds: float) -> bool:
        """Whether a connection was dropped for a read-only server in the last ``seconds``, or the pool's last
        connection attempt found only read-only servers."""
        return self.refused_read_only or (self.read_only_at is not None
                                          and time.monotonic() - self.read_only_at <= seconds)
