"""Recorded failures: every classified error is written with its time, for counting and analysis."""

from __future__ import annotations

from psycopg import AsyncConnection

from app.errors import ErrorType


async def record_error_event(
    conn: AsyncConnection,
    error_type: ErrorType,
    component: str,
    message: str,
    *,
    user_id: str | None = None,
    generation_id: str | None = None,
    generation_pose_id: int | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO error_events (error_type, component, message, user_id, generation_id, generation_pose_id)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (error_type.value, component, message[:2000], user_id, generation_id, generation_pose_id),
    )
