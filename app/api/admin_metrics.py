"""The seed's metrics endpoints: system metrics, top users, popular poses, error analysis, health indicators.

Who may call is checked by guards, before the query is validated: no token is 401, a USER on an
admin endpoint 403, and only then a bad ``period`` or ``limit`` 422.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import BaseRouteHandler
from litestar.params import Parameter
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from psycopg import AsyncConnection

from app.api.admin_metrics_schemas import (
    ErrorAnalysis,
    ErrorTypeCount,
    HealthIndicatorsView,
    HealthIndicatorView,
    PopularPose,
    PopularPoses,
    SystemMetrics,
    TopUser,
    TopUsers,
)
from app.api.auth import authenticate, require_admin
from app.api.deps import DatabaseConnection
from app.api.error_responses import EXCEPTION_HANDLERS
from app.api.openapi import error_responses
from app.api.state import api_state
from app.bookkeeping import fold_pending_deltas
from app.domain.metrics import (
    Window,
    WindowTotals,
    error_counts,
    health_indicators,
    overall_status,
    popular_poses,
    top_users,
    window_totals,
)
from app.domain.thresholds import MetricsPeriod
from app.errors import ErrorType
from app.observability.logging import get_logger
from app.queue import QueueCounts, read_queue_counts
from app.timestamps import iso_or_none

log = get_logger("Metrics")

MAX_LIMIT = 100
_ALLOWED = {
    "period": "allowed values: " + ", ".join(p.value for p in MetricsPeriod),
    "limit": f"allowed values: an integer from 1 to {MAX_LIMIT}",
}

Period = Annotated[MetricsPeriod, Parameter(description="Rolling window ending now: 1h, 24h, 7d or 30d.")]
OptionalPeriod = Annotated[
    MetricsPeriod | None,
    Parameter(description="Rolling window ending now: 1h, 24h, 7d or 30d; omitted means all time."),
]

Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description=f"How many to return, 1..{MAX_LIMIT}.")]


async def authenticated(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    await authenticate(connection)  # type: ignore[arg-type]


async def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    require_admin(await authenticate(connection))  # type: ignore[arg-type]


def _name_allowed_values(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """The app's 422, with the allowed values added to each bad query parameter's message."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    explained = [
        {**p, "message": f"{p.get('message')}; {_ALLOWED[p['key']]}"}
        if isinstance(p, dict) and p.get("key") in _ALLOWED else p
        for p in problems
    ]
    return EXCEPTION_HANDLERS[ValidationException](request, ValidationException(detail=exc.detail, extra=explained))


async def _queue_counts(request: Request[Any, Any, Any]) -> QueueCounts:
    try:
        # The Redis client is synchronous; keep it off the event loop.
        return await asyncio.to_thread(read_queue_counts, api_state(request).redis)
    except Exception as exc:
        log.error("Queue unreachable while reading metrics", exc_info=exc)
        raise HTTPException(
            status_code=HTTP_503_SERVICE_UNAVAILABLE, detail="The queue (Redis) is unavailable; retry later.",
            extra={"errorType": ErrorType.NETWORK_ERROR.value}, headers={"Retry-After": "5"},
        ) from None


async def _totals_and_queue(
    request: Request[Any, Any, Any], db: AsyncConnection, window: Window
) -> tuple[WindowTotals, QueueCounts]:
    """Fold pending rollup deltas, then read Redis while PostgreSQL answers; the connection is never left
    running a query on error."""
    await fold_pending_deltas(db)
    queue_read = asyncio.create_task(_queue_counts(request))
    try:
        totals = await window_totals(db, window)
    except BaseException:
        queue_read.cancel()
        raise
    return totals, await queue_read


class MetricsController(Controller):
    path = "/metrics"
    tags = ["metrics"]
    exception_handlers = {ValidationException: _name_allowed_values}

    @get("/", guards=[admin_only], summary="System metrics over a period (ADMIN)",
         description="Generations created in [startTime, endTime) with endTime = now: their counts by status "
                     "(active = queued or processing now), mean duration of the finished ones (ms), poses per "
                     "generation, completed / total x 100, delivered poses; ledger charges and refunds written "
                     "in the period; queue counts now, from RQ's registries of job attempts (queueActive: live "
                     "executions only; queueFailed: failed attempts no later attempt replaced). Exact at any size.",
         responses=error_responses(401, 403, 422, 503))
    async def system_metrics(self, request: Request[Any, Any, Any], db: DatabaseConnection,
                     period: Period = MetricsPeriod.DAY) -> SystemMetrics:
        window = Window.ending_now(period)
        totals, queue = await _totals_and_queue(request, db, window)
        return SystemMetrics(
            totalGenerations=totals.generations, activeGenerations=totals.active,
            completedGenerations=totals.completed, failedGenerations=totals.failed,
            avgGenerationTime=totals.avg_generation_ms, avgPosesPerGeneration=totals.avg_poses_per_generation,
            successRate=totals.success_rate, queueDepth=queue.depth, queueWaiting=queue.waiting,
            queueActive=queue.active, queueFailed=queue.failed, totalPosesGenerated=totals.poses_delivered,
            totalCreditsSpent=totals.credits_charged, totalCreditsRefunded=totals.credits_refunded,
            startTime=iso_or_none(window.start) or "", endTime=iso_or_none(window.end) or "",
        )

    @get("/top-users", guards=[admin_only], summary="Users with the most generations (ADMIN)",
         description="All time. generationCount = generations created; totalPoses = poses delivered (completed); "
                     "successRate = completed / generationCount x 100. Most generations first, ties by userId.",
         responses=error_responses(401, 403, 422))
    async def list_top_users(self, db: DatabaseConnection, limit: Limit = 10) -> TopUsers:
        await fold_pending_deltas(db)
        users = await top_users(db, limit)
        return TopUsers(users=[
            TopUser(userId=u.user_id, generationCount=u.generations, totalPoses=u.poses_delivered,
                    successRate=u.success_rate)
            for u in users
        ])

    @get("/popular-poses", guards=[authenticated], summary="The most used poses (any authenticated user)",
         description="All time. usageCount = generation pose slots that used the pose, whatever their outcome. "
                     "Most used first, ties by poseId; poses never used are not listed.",
         responses=error_responses(401, 422))
    async def list_popular_poses(self, db: DatabaseConnection, limit: Limit = 20) -> PopularPoses:
        await fold_pending_deltas(db)
        poses = await popular_poses(db, limit)
        return PopularPoses(poses=[
            PopularPose(poseId=p.pose_id, name=p.name, usageCount=p.slots, category=p.category) for p in poses
        ])

    @get("/errors", guards=[admin_only], summary="Recorded errors by type (ADMIN)",
         description="Every error type recorded, with its count and last occurrence, most frequent first (ties by "
                     "errorType). All time unless a period is given.",
         responses=error_responses(401, 403, 422))
    async def error_analysis(self, db: DatabaseConnection, period: OptionalPeriod = None) -> ErrorAnalysis:
        await fold_pending_deltas(db)
        counts = await error_counts(db, Window.ending_now(period) if period else None)
        return ErrorAnalysis(errors=[
            ErrorTypeCount(errorType=c.error_type, count=c.events, lastOccurred=iso_or_none(c.last_occurred) or "")
            for c in counts
        ])

    @get("/health-indicators", guards=[admin_only], summary="The seed's health indicators (ADMIN)",
         description="Success rate, average time per pose, queue depth and refund rate judged against the seed's "
                     "threshold tables (good / warning / critical, with the seed's action); status is the worst. "
                     "No traffic is good, with a note saying there was no data.",
         responses=error_responses(401, 403, 422, 503))
    async def health(self, request: Request[Any, Any, Any], db: DatabaseConnection,
                                period: Period = MetricsPeriod.DAY) -> HealthIndicatorsView:
        window = Window.ending_now(period)
        totals, queue = await _totals_and_queue(request, db, window)
        indicators = health_indicators(totals, queue.depth)
        return HealthIndicatorsView(
            status=overall_status(indicators).value, period=period.value,
            startTime=iso_or_none(window.start) or "", endTime=iso_or_none(window.end) or "",
            indicators=[
                HealthIndicatorView(key=i.table.key, name=i.table.name, value=i.value, unit=i.table.unit,
                                    status=i.status.value, label=i.label, action=i.action,
                                    thresholds=i.table.thresholds, basis=i.basis, note=i.note)
                for i in indicators
            ],
        )
