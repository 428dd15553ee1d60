"""``GET /health``: no auth, the seed's shape, 503 when PostgreSQL or Redis is down (or the process is in its
shutdown delay, ``shuttingDown: true``), answered within 2 s.

One field more than the seed's: ``faultDrill``, so that a drill (``POSEGEN_FAULTS``) is never mistaken for
an outage."""

from __future__ import annotations

import asyncio

from litestar import Request, Response, get
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from psycopg_pool import PoolTimeout

from app import APP_NAME, __version__
from app.api.draining import draining
from app.api.error_responses import RETRY_AFTER_UNAVAILABLE
from app.api.schemas import DependencyCheck, FaultDrill, Health, HealthChecks, PausedView, QueueCheck, QueueCountsView
from app.api.state import api_state
from app.domain.intake import read_intake_pause, workers_paused
from app.queue import read_queue_counts
from app.timestamps import iso_timestamp

CHECK_TIMEOUT_SECONDS = 1.5
PHASE = "Production Ready"


class ReadOnlyDatabase(Exception):
    """The server answering is a standby (in recovery): it cannot take a generation's writes."""


async def _check_database(request: Request) -> DependencyCheck:
    """Connected only to a server that takes writes: a pooled connection to a standby (a demoted primary, or
    a ``DATABASE_URL`` without ``target_session_attrs=read-write``) or to a primary fenced read-only
    (``default_transaction_read_only``) reports ``disconnected`` with
    ``ReadOnlyDatabase``, so readiness never says ready while no read-write primary is reachable."""
    async def probe() -> None:
        async with api_state(request).pool.connection(timeout=CHECK_TIMEOUT_SECONDS) as conn:
            # transaction_read_only: also a primary fenced with default_transaction_read_only (what libpq's
            # target_session_attrs=read-write checks), which pg_is_in_recovery() calls a primary.
            row = await (await conn.execute(
                "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool")).fetchone()
            if row is None or row[0]:
                raise ReadOnlyDatabase

    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        error = type(exc).__name__
        # No connection to give within the check's time, because the pool dropped each one it opened for a
        # read-only server (a DATABASE_URL naming a standby alone), or libpq found only read-only servers
        # (target_session_attrs=read-write while no primary answers): say so, not "TimeoutError".
        if isinstance(exc, (TimeoutError, PoolTimeout)) and api_state(request).checkout_check.met_read_only_within(
                CHECK_TIMEOUT_SECONDS + 1):
            error = ReadOnlyDatabase.__name__
        return DependencyCheck("disconnected", error=error)
    return DependencyCheck("connected")


async def _check_redis_and_queue(request: Request) -> tuple[DependencyCheck, QueueCheck]:
    redis = api_state(request).redis
    try:
        counts = await asyncio.wait_for(asyncio.to_thread(read_queue_counts, redis), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        error = type(exc).__name__
        return DependencyCheck("disconnected", error=error), QueueCheck("unavailable", error=error)
    view = QueueCountsView(counts.waiting, counts.active, counts.completed, counts.failed, counts.delayed)
    return DependencyCheck("connected"), QueueCheck("operational", counts=view)


def _fault_drill(request: Request) -> FaultDrill:
    faults = api_state(request).settings.faults
    return FaultDrill(active=bool(faults), faults={kind.value: fraction for kind, fraction in faults.items()})


async def _paused(request: Request) -> PausedView | None:
    """The operators' planned pause, when there is one (None also when Redis cannot say)."""
    redis = api_state(request).redis

    def read() -> PausedView | None:
        pause, workers = read_intake_pause(redis), workers_paused(redis)
        if pause is None and not workers:
            return None
        return PausedView(intake=pause is not None, workers=workers)

    try:
        return await asyncio.wait_for(asyncio.to_thread(read), CHECK_TIMEOUT_SECONDS)
    except Exception:  # Redis down: the redis check already says so
        return None


@get("/health", summary="Application health (no authentication); says when an operator paused intake or workers",
     tags=["health"])
async def health(request: Request) -> Response[Health]:
    database, (redis, queue), paused = await asyncio.gather(
        _check_database(request), _check_redis_and_queue(request), _paused(request))
    # Readiness: no traffic without PostgreSQL and Redis, nor for a process stopping on SIGTERM.
    stopping = draining()
    healthy = database.status == "connected" and redis.status == "connected" and not stopping
    body = Health(
        status="healthy" if healthy else "unhealthy", timestamp=iso_timestamp(), app=APP_NAME,
        version=__version__, checks=HealthChecks(database=database, redis=redis, queue=queue), phase=PHASE,
        paused=paused,
        faultDrill=_fault_drill(request),
        shuttingDown=True if stopping else None,
    )
    # Monitors must see the state now, never a cached copy.
    headers = {"Cache-Control": "no-store"} | ({} if healthy else {"Retry-After": RETRY_AFTER_UNAVAILABLE})
    return Response(body, status_code=HTTP_200_OK if healthy else HTTP_503_SERVICE_UNAVAILABLE, headers=headers)



@get("/health/live", summary="Liveness: the process answers (no dependency checks, no authentication)",
     tags=["health"], media_type="text/plain", sync_to_thread=False)
def liveness() -> str:
    # A liveness probe must not fail when PostgreSQL or Redis does: restarting every API process would not
    # bring them back. Readiness (/health) takes the process out of the Service instead.
    return "alive"
