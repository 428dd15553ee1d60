"""The bookkeeping: exact counters kept by PostgreSQL in the transactions that write what they count, folded into
totals off the write path. The admin metrics (:mod:`app.domain.metrics`) and the exporter
(:class:`exporter.collectors.DomainCollector`) read them.

How it works (migrations 003, 008 and 010; the SQL in ``app/db/functions/``):

1. Writes append deltas. Triggers on generations, pose slots, the credit ledger and error events insert
   rows into ``metrics_*_deltas`` (insert-only, so writers never contend for a rollup row); the reaper's
   re-queues and exhausted attempts, which no row keeps, go through ``exporter_count()``.
2. Folding moves deltas into the rollups (``metrics_*_hourly``, ``metrics_user_totals``,
   ``metrics_pose_usage``, ``metrics_error_totals``) and the exporter's totals (``metrics_exporter_totals``,
   ``metrics_histogram_totals``): ``metrics_fold(max_rows)``, one folder at a time (an advisory lock; a
   busy lock returns 0 at once).
3. Readers add what is not folded yet, so every figure is exact whenever it is read. Which exporter figure a
   delta row makes is written once, in the view ``metrics_exporter_pending`` (migration 011): the fold
   reads it for the rows it moves, the exporter's scrape for the rows still waiting.

The fold policy, with its budgets (:data:`READER_FOLD`, :data:`SCRAPE_FOLD`, :data:`BACKGROUND_FOLD`):

- every reader folds one bounded batch before it reads (the admin metrics :func:`fold_pending_deltas`, the
  exporter's scrape :func:`fold`), so a burst of writes drains without any folder running;
- in the background, the workers' reaper timer (:func:`fold_backlog_async`) and the exporter's
  :class:`DeltaFolder` thread (:func:`fold_backlog`) fold batches until one comes back short or the
  budget's time is spent, keeping the backlog to a few seconds of writes whichever processes run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection, Connection

from app.connections import pg_connect
from app.observability.logging import get_logger

log = get_logger("Metrics")


@dataclass(frozen=True)
class FoldBudget:
    """How much one fold may move: ``rows`` per kind of delta per batch, and, for a background fold, batches
    repeated while one comes back full for at most ``seconds`` (None: one batch)."""

    rows: int
    seconds: float | None = None


# An admin metrics read: most deltas it folds first; the rest are read as deltas, so the answer stays exact.
READER_FOLD = FoldBudget(rows=20_000)
# A scrape of the exporter: a few ms, so a backlog drains over a few scrapes within the scrape's deadline.
SCRAPE_FOLD = FoldBudget(rows=2_000)
# A background pass: a backlog left by hours without a folder (hundreds of thousands of rows) drains in a
# few passes.
BACKGROUND_FOLD = FoldBudget(rows=50_000, seconds=2.0)

# Seconds between the exporter's background folds: as often as the workers' reaper pass by default
# (POSEGEN_REAPER_INTERVAL_SECONDS).
FOLD_INTERVAL_SECONDS = 5.0
# A background fold that takes longer than this is cancelled by the server (it is retried next time).
FOLD_STATEMENT_TIMEOUT_MS = 30_000

_FOLD_SQL = "SELECT metrics_fold(%s)"


def fold(conn: Connection[Any], max_rows: int) -> int:
    """Move up to ``max_rows`` deltas of each kind into the rollups; returns rows moved (0 when another fold
    holds the lock). Raises psycopg's errors."""
    row = conn.execute(_FOLD_SQL, (max_rows,)).fetchone()
    return int(row[0]) if row else 0


async def fold_pending_deltas(conn: AsyncConnection[Any], max_rows: int = READER_FOLD.rows) -> int:
    """:func:`fold` on an asyncio connection (by default a reader's batch); returns rows moved."""
    cur = await conn.execute(_FOLD_SQL, (max_rows,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def fold_backlog(conn: Connection[Any], budget: FoldBudget = BACKGROUND_FOLD) -> int:
    """Fold batches of ``budget.rows`` per kind until one moves fewer rows or ``budget.seconds`` are spent;
    returns rows moved (0 when another fold holds the lock). Raises psycopg's errors."""
    moved = 0
    deadline = time.monotonic() + (budget.seconds or 0.0)
    while True:
        batch = fold(conn, budget.rows)
        moved += batch
        if batch < budget.rows or time.monotonic() >= deadline:
            return moved


async def fold_backlog_async(conn: AsyncConnection[Any], budget: FoldBudget = BACKGROUND_FOLD) -> int:
    """:func:`fold_backlog` on an asyncio connection."""
    moved = 0
    deadline = time.monotonic() + (budget.seconds or 0.0)
    while True:
        batch = await fold_pending_deltas(conn, budget.rows)
        moved += batch
        if batch < budget.rows or time.monotonic() >= deadline:
            return moved


class DeltaFolder(threading.Thread):
    """The exporter's background folder: :func:`fold_backlog` every ``interval_seconds`` over a connection of
    its own, reopened after a failure.

    The workers fold on their reaper's timer, and every scrape folds a bounded batch before it reads. With no
    worker running (an outage, a scale-to-zero, an API-only deployment) creates would still add deltas faster
    than scrapes fold them; a scrape reads the deltas not folded yet, so its read would grow until it missed its
    deadline and the PostgreSQL source went down. This thread keeps the backlog to a few seconds of writes
    whenever the exporter runs, outside any scrape's deadline.
    """

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
        """Ask the thread to end after its current fold (it closes its connection)."""
        self._stop_event.set()
