"""Finds generations abandoned by a dead worker and re-queues or finishes them, on a timer; and folds the
bookkeeping deltas into their rollups on the same timer.

Runs as a thread of every worker process (not the work-horse), so abandoned
work is picked up within ``lease_seconds + reaper_interval_seconds`` as long as
one worker is alive, and the deltas not folded yet stay a few seconds of writes (readers fold too, and
add what is left: their figures are exact either way; folding keeps what they add small).
"""

from __future__ import annotations

import asyncio
import threading

from redis import Redis

from app.bookkeeping import fold_backlog_async
from app.connections import pg_connect_async
from app.domain.processing import reap_abandoned
from app.observability.logging import get_logger
from app.queue import enqueue_generation, job_id_for, job_pending, make_queue, retire_attempt
from app.settings import Settings

log = get_logger("Worker")


async def reap_once(settings: Settings, redis: Redis) -> int:
    """One pass; returns how many generations it re-queued or finished. Bounded by :func:`pass_deadline`:
    a database that stops answering mid-pass fails the pass (psycopg cancels and closes), never the thread."""
    async with asyncio.timeout(pass_deadline(settings)):
        async with await pg_connect_async(settings.database_url) as conn:
            result = await reap_abandoned(
                conn, max_attempts=settings.max_attempts, job_pending=lambda job_id: job_pending(redis, job_id),
                queued_check_seconds=settings.queued_check_seconds,
            )
            queue = make_queue(redis)
            for generation_id, attempt in result.requeue:
                enqueue_generation(queue, generation_id, attempt)
                retire_attempt(redis, job_id_for(generation_id, attempt - 1))
                log.warning("Re-queued abandoned generation", generationId=generation_id, attempt=attempt)
            for generation_id in result.failed:
                log.error("Abandoned generation failed after its last attempt", generationId=generation_id)
    return len(result.requeue) + len(result.failed)


async def fold_once(settings: Settings) -> int:
    """Fold the bookkeeping deltas (:func:`app.bookkeeping.fold_backlog_async`); returns rows moved.
    Bounded by :func:`pass_deadline` like a reaper pass."""
    async with asyncio.timeout(pass_deadline(settings)):
        async with await pg_connect_async(settings.database_url) as conn:
            return await fold_backlog_async(conn)


def pass_deadline(settings: Settings) -> float:
    """Seconds one reaper pass may take: a pass is milliseconds of work, so this only ends a stuck one."""
    return max(15.0, 3 * settings.reaper_interval_seconds)


class Reaper(threading.Thread):
    def __init__(self, settings: Settings, redis: Redis) -> None:
        super().__init__(name="posegen-reaper", daemon=True)
        self._settings = settings
        self._redis = redis
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self._settings.reaper_interval_seconds):
            try:
                asyncio.run(reap_once(self._settings, self._redis))
            except Exception as exc:  # a database or Redis outage: try again next tick
                log.warning("Reaper pass failed", error=str(exc))
            try:  # apart from the reaping: a Redis outage must not stop the folding
                asyncio.run(fold_once(self._settings))
            except Exception as exc:
                log.warning("Folding the bookkeeping deltas failed", error=str(exc))

    def stop(self) -> None:
        self._stop_event.set()
