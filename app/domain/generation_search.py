"""Finding generations for operators: a filter (status, error type, user, created/finished window, whether
poses failed), pages newest first by an opaque cursor, and each generation's attempts (its original run and
every retry).

The filter is also what a retry applies to (:mod:`app.domain.retries`), so "what I see" and "what I
retry" are the same rows. Each filter has an index (migration 009 and 001); the WHERE clause holds only
the filters given, so the planner can pick it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from app.errors import DomainError
from app.timestamps import iso_timestamp

STATUSES = ("queued", "processing", "completed", "failed")


class BadCursorError(DomainError):
    """The cursor was not one this API handed out."""

    field = "cursor"


@dataclass(frozen=True)
class GenerationFilter:
    """Which generations; every field optional, all given ones must hold. Windows are half-open [from, to)."""

    generation_id: str | None = None
    status: str | None = None
    error_type: str | None = None
    user_id: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    finished_from: datetime | None = None
    finished_to: datetime | None = None
    # True: finished generations with at least one failed pose, the ``failed`` ones and the ``completed`` ones
    # some of whose poses failed (what a retry acts on); False: every other generation.
    has_failed_poses: bool | None = None

    def as_json(self) -> dict[str, Any]:
        """The filter as the audit log and API show it (camelCase, only the fields given)."""
        names = {"generation_id": "generationId", "status": "status", "error_type": "errorType",
                 "user_id": "userId", "created_from": "createdFrom", "created_to": "createdTo",
                 "finished_from": "finishedFrom", "finished_to": "finishedTo", "has_failed_poses": "hasFailedPoses"}
        shown: dict[str, Any] = {}
        for field, value in asdict(self).items():
            if value is not None:
                shown[names[field]] = iso_timestamp(value) if isinstance(value, datetime) else value
        return shown

    def where(self, alias: str = "g") -> tuple[sql.Composable, dict[str, Any]]:
        """The SQL condition on ``generations`` AS ``alias`` and its parameters (``TRUE`` when empty)."""
        column = {"generation_id": "id", "status": "status", "error_type": "error_type", "user_id": "user_id"}
        parts: list[sql.Composable] = []
        params: dict[str, Any] = {}
        for field, name in column.items():
            value = getattr(self, field)
            if value is not None:
                parts.append(sql.SQL("{} = {}").format(sql.Identifier(alias, name), sql.Placeholder(field)))
                params[field] = value
        for field, name, op in (("created_from", "created_at", ">="), ("created_to", "created_at", "<"),
                                ("finished_from", "finished_at", ">="), ("finished_to", "finished_at", "<")):
            value = getattr(self, field)
            if value is not None:
                parts.append(sql.SQL("{} " + op + " {}").format(sql.Identifier(alias, name), sql.Placeholder(field)))
                params[field] = value
        if self.has_failed_poses is not None:
            failed_poses = _FAILED_POSES.format(error_type=sql.Identifier(alias, "error_type"),
                                                id=sql.Identifier(alias, "id"))
            parts.append(failed_poses if self.has_failed_poses else sql.SQL("NOT {}").format(failed_poses))
        if not parts:
            return sql.SQL("TRUE"), params
        return sql.SQL(" AND ").join(parts), params


# A finished generation's error_type is its failed poses' most frequent one, NULL when none failed (and while
# it runs): the condition on it lets the planner skip the others by generations_error_type_created's rows, and
# the pose check keeps the rows exactly those with a failed pose now.
_FAILED_POSES = sql.SQL(
    "({error_type} IS NOT NULL AND EXISTS (SELECT 1 FROM generation_poses failed_pose"
    " WHERE failed_pose.generation_id = {id} AND failed_pose.status = 'failed'))"
)


def encode_cursor(created_at: datetime, generation_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{generation_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, generation_id = text.partition("|")
        if not generation_id:
            raise ValueError("no id")
        return datetime.fromisoformat(moment), generation_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursorError("cursor is not one this API returned") from None


_PAGE_SQL = """
SELECT g.id, g.user_id, g.status, g.error_type, g.error_message, g.poses_count, g.credits_charged,
       g.credits_refunded, g.created_at, g.finished_at, g.duration_ms, g.run, g.attempt,
       g.trace_context ->> 'x-datadog-trace-id' AS trace_id
  FROM generations g
 WHERE {where} AND {after}
 ORDER BY g.created_at DESC, g.id DESC
 LIMIT %(limit)s
"""


async def search_generations(
    conn: AsyncConnection, wanted: GenerationFilter, *, limit: int, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of generations matching ``wanted``, newest first, each with its ``attempts``; and the
    cursor of the next page (None on the last). Raises :class:`BadCursorError`."""
    where, params = wanted.where()
    after: sql.Composable = sql.SQL("TRUE")
    if cursor:
        params["cursor_at"], params["cursor_id"] = decode_cursor(cursor)
        after = sql.SQL("(g.created_at, g.id) < (%(cursor_at)s, %(cursor_id)s)")
    params["limit"] = limit + 1
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql.SQL(_PAGE_SQL).format(where=where, after=after), params)
        rows = await cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    attempts = await generation_attempts(conn, [r["id"] for r in rows])
    page = [_row_view(r, attempts.get(r["id"], [])) for r in rows]
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return page, next_cursor


def _row_view(row: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "generationId": row["id"], "userId": row["user_id"], "status": row["status"],
        "errorType": row["error_type"], "errorMessage": row["error_message"], "posesCount": row["poses_count"],
        "creditsCharged": int(row["credits_charged"]), "creditsRefunded": int(row["credits_refunded"]),
        "createdAt": iso_timestamp(row["created_at"]),
        "finishedAt": iso_timestamp(row["finished_at"]) if row["finished_at"] else None,
        "durationMs": row["duration_ms"], "deliveries": row["attempt"], "traceId": row["trace_id"],
        "attempts": attempts,
    }


# Each run's poses: those whose current run it is (on generation_poses) and those retried after it
# (archived in generation_pose_attempts). Run 1 was asked for by the user when the generation was made.
_ATTEMPTS_SQL = """
WITH outcomes AS (
    SELECT p.generation_id, p.run, p.status, p.error_type, p.finished_at
      FROM generation_poses p WHERE p.generation_id = ANY(%(ids)s)
    UNION ALL
    SELECT p.generation_id, a.run, a.status, a.error_type, a.finished_at
      FROM generation_pose_attempts a JOIN generation_poses p ON p.id = a.generation_pose_id
     WHERE p.generation_id = ANY(%(ids)s)
), per_run AS (
    SELECT generation_id, run,
           count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           array_agg(DISTINCT error_type) FILTER (WHERE error_type IS NOT NULL) AS error_types,
           max(finished_at) AS finished_at
      FROM outcomes GROUP BY generation_id, run
)
SELECT r.generation_id, r.run, r.completed, r.failed, r.pending, r.error_types, r.finished_at,
       coalesce(gr.requested_by, g.user_id) AS requested_by, coalesce(gr.requested_at, g.created_at) AS requested_at,
       coalesce(gr.charged, true) AS charged, coalesce(gr.credits, g.poses_count::bigint * g.price_per_pose) AS credits,
       gr.audit_id
  FROM per_run r
  JOIN generations g ON g.id = r.generation_id
  LEFT JOIN generation_runs gr ON gr.generation_id = r.generation_id AND gr.run = r.run
 ORDER BY r.generation_id, r.run
"""


async def generation_attempts(conn: AsyncConnection, generation_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Per generation id, its runs in order: who asked (the user for run 1, the admin for a retry), when,
    whether it was charged, and its outcome (poses completed/failed/pending, error types, finish)."""
    if not generation_ids:
        return {}
    found: dict[str, list[dict[str, Any]]] = {}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_ATTEMPTS_SQL, {"ids": generation_ids})
        for r in await cur.fetchall():
            outcome = "running" if r["pending"] else ("completed" if r["completed"] else "failed")
            found.setdefault(r["generation_id"], []).append({
                "run": r["run"], "kind": "retry" if r["run"] > 1 else "original",
                "requestedBy": r["requested_by"], "requestedAt": iso_timestamp(r["requested_at"]),
                "charged": r["charged"], "credits": int(r["credits"]), "auditId": r["audit_id"],
                "outcome": outcome, "posesCompleted": r["completed"], "posesFailed": r["failed"],
                "posesPending": r["pending"], "errorTypes": sorted(r["error_types"] or []),
                "finishedAt": iso_timestamp(r["finished_at"]) if r["finished_at"] and not r["pending"] else None,
            })
    return found
