"""Database work bounded in time: a peer that acknowledges but never answers (a hung proxy) is beyond what
TCP notices, so callers bound their statements with :func:`bounded` (psycopg then cancels the query and
closes the connection, so a pool discards it). Connections themselves are opened by :mod:`app.connections`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

# The API's database work per batch (a coalesced create or read takes milliseconds): past this the
# connection is treated as dead and the request answered 503, instead of hanging on a silent peer.
API_DB_SECONDS = 5.0


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
