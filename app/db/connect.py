"""How the project opens PostgreSQL connections: a bounded connect and a dead peer noticed in bounded time.

libpq's own mechanisms, set on every connection: ``connect_timeout``; TCP keepalives (a probe after
10 s of silence, every 5 s, three missed = dead), so an idle connection whose route died (a dropped
NAT entry, a failed-over load balancer) breaks within about 25 s instead of the kernel's two hours;
and ``tcp_user_timeout``, so data the peer never acknowledges fails the connection within 30 s.

A peer that acknowledges but never answers (a hung proxy) is beyond TCP: callers bound their
statements themselves (``asyncio.timeout`` around async work — psycopg then cancels the query and
closes the connection — or ``statement_timeout`` on the server).
"""

from __future__ import annotations

from typing import Any

KEEPALIVE_IDLE_SECONDS = 10
KEEPALIVE_INTERVAL_SECONDS = 5
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_MS = 30_000


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
