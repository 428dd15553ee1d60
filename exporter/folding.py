"""The exporter's own folder: a thread that folds the bookkeeping deltas on a timer.

The workers fold on their reaper's timer, and every scrape folds a bounded batch before it reads. With no
worker running (an outage, a scale-to-zero, an API-only deployment) creates would still add deltas, one
or more per create, faster than scrapes fold them; a scrape reads the deltas not folded yet, so its read
would grow until it missed its deadline and the PostgreSQL source went down. This thread keeps the
backlog to a few seconds of writes whenever the exporter runs, outside any scrape's deadline.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from app.connections import pg_connect
from app.domain.metrics import fold_backlog
from app.observability.logging import get_logger

log = get_logger("Metrics")

# Seconds between folds: as often as the workers' reaper pass by default (POSEGEN_REAPER_INTERVAL_SECONDS).
FOLD_INTERVAL_SECONDS = 5.0
# A fold that takes longer than this is cancelled by the server (it is retried next time).
FOLD_STATEMENT_TIMEOUT_MS = 30_000


class DeltaFolder(threading.Thread):
    """Folds every ``interval_seconds`` over a connection of its own, reopened after a failure."""

    def __init__(self, database_url: str, interval_seconds: float = FOLD_INTERVAL_SECONDS) -> None:
        super().__init__(name="posegen-exporter-folder", daemon=True)
        self._database_url = database_url
        self._interval = interval_seconds
        self._stop_event = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = pg_connect(self._database_url, autocommit=True,
                                            options=f"-c statement_timeout={FOLD_STATEMENT_TIMEOUT_MS}",
                                            application_name="posegen-exporter-folder")
                fold_backlog(self._conn)
            except psycopg.Error as exc:  # an outage or a cancelled fold: try again next tick
                log.warning("Folding the bookkeeping deltas failed", error=str(exc))
                if self._conn is not None and (self._conn.broken or self._conn.closed):
                    self._conn.close()
                    self._conn = None
        if self._conn is not None:
            self._conn.close()

    def stop(self) -> None:
        self._stop_event.set()
