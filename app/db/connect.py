"""How the project opens PostgreSQL connections: a bounded connect and a dead peer noticed in bounded time.

libpq's own mechanisms, set on every connection: ``connect_timeout``; TCP keepalives (a probe after
10 s of silence, every 5 s, three missed = dead), so an idle connection whose route died (a dropped
NAT entry, a failed-over load balancer) breaks within about 25 s instead of the kernel's two hours;
and ``tcp_user_timeout``, so data the peer never acknowledges fails the connection within 30 s.

A peer that acknowledges but never answers (a hung proxy) is beyond TCP: callers bound their
statements themselves with :func:`bounded` (psycopg then cancels the query and closes the connection,
so a pool discards it) or with ``statement_timeout`` on the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg

KEEPALIVE_IDLE_SECONDS = 10
KEEPALIVE_INTERVAL_SECONDS = 5
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_MS = 30_000
# The API's database work per batch (a coalesced create or read takes milliseconds): past this the
# connection is treated as dead and the request answered 503, instead of hanging on a silent peer.
API_DB_SECONDS = 5.0


def pg_connect_kwargs(connect_timeout: int = 5, tcp_user_timeout_ms: int = TCP_USER_TIMEOUT_MS) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.connect``/``AsyncConnection.connect``/pool ``kwargs`` (libpq parameters)."""
    return {
        "connect_timeout": connect_timeout,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_SECONDS,
        "keepalives_interval": KEEPALIVE_INTERVAL_SECONDS,
        "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": tcp_user_timeout_ms,
    }


class DatabaseSilentError(psycopg.OperationalError):
    """PostgreSQL gave no answer within the bound: the connection is treated as dead (and closed)."""


@asynccontextmanager
async def bounded(seconds: float) -> AsyncIterator[None]:
    """Database work of the block must end within ``seconds``; raises :class:`DatabaseSilentError` otherwise."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise DatabaseSilentError(f"PostgreSQL gave no answer within {seconds:g} s") from exc
