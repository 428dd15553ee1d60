"""Pose library queries and seeding."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from app.domain.pose_library import LIBRARY

_POSE_COLUMNS = 'pose_id AS "poseId", name, category, keypoints'


async def list_poses(
    conn: AsyncConnection, *, category: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_POSE_COLUMNS}, count(*) OVER () AS total FROM poses"
            " WHERE (%(category)s::text IS NULL OR category = %(category)s)"
            " ORDER BY category, pose_id LIMIT %(limit)s OFFSET %(offset)s",
            {"category": category, "limit": limit, "offset": offset},
        )
        rows = await cur.fetchall()
        if rows:
            total = int(rows[0]["total"])
        else:
            await cur.execute(
                "SELECT count(*) AS total FROM poses WHERE (%(category)s::text IS NULL OR category = %(category)s)",
                {"category": category},
            )
            total = int((await cur.fetchone())["total"])  # type: ignore[index]
    for row in rows:
        row.pop("total", None)
    return rows, total


async def get_pose(conn: AsyncConnection, pose_id: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_POSE_COLUMNS} FROM poses WHERE pose_id = %s", (pose_id,))
        return await cur.fetchone()


async def seed_pose_library(conn: AsyncConnection) -> int:
    """Insert or update the built-in library; returns how many poses it holds."""
    async with conn.transaction():
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO poses (pose_id, name, category, keypoints) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (pose_id) DO UPDATE SET name = EXCLUDED.name, category = EXCLUDED.category,"
                " keypoints = EXCLUDED.keypoints",
                [(p.pose_id, p.name, p.category, Jsonb(p.keypoints)) for p in LIBRARY],
            )
    return len(LIBRARY)
