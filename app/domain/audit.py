"""The operators' audit log: one append-only row per action (retry dry-run and execution, pause, resume).

Rows are written in the transaction of the action they describe, so an action that rolled back left
no row and a row always describes something that happened. The table refuses updates and deletes
(migration 009). ``pose_operator_actions_total{action}`` on the exporter counts these rows.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb


class Action(StrEnum):
    RETRY_DRY_RUN = "retry_dry_run"
    RETRY = "retry"
    PAUSE_INTAKE = "pause_intake"
    RESUME_INTAKE = "resume_intake"
    PAUSE_WORKERS = "pause_workers"
    RESUME_WORKERS = "resume_workers"


async def reserve_audit_id(conn: AsyncConnection) -> int:
    """An id for an audit row written at the end of the action's transaction (rows it writes first,
    such as generation runs, refer to it)."""
    cur = await conn.execute("SELECT nextval(pg_get_serial_sequence('operator_audit', 'id'))")
    (audit_id,) = await cur.fetchone()  # type: ignore[misc]
    return int(audit_id)


async def record_action(
    conn: AsyncConnection,
    actor: str,
    action: Action,
    target: dict[str, Any],
    counts: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    audit_id: int | None = None,
) -> dict[str, Any]:
    """Append one audit row; returns it as the API shows it. A second row with the same actor, action
    and idempotency key raises ``psycopg.errors.UniqueViolation``."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "INSERT INTO operator_audit (id, actor, action, target, counts, idempotency_key)"
            " VALUES (coalesce(%s, nextval(pg_get_serial_sequence('operator_audit', 'id'))), %s, %s, %s, %s, %s)"
            " RETURNING id, at, actor, action, target, counts, idempotency_key",
            (audit_id, actor, action.value, Jsonb(target), Jsonb(counts), idempotency_key),
        )
        row = await cur.fetchone()
    assert row is not None
    return audit_view(row)


async def find_action(
    conn: AsyncConnection, actor: str, action: Action, idempotency_key: str
) -> dict[str, Any] | None:
    """The audit row an earlier request with this idempotency key wrote, if any."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT id, at, actor, action, target, counts, idempotency_key FROM operator_audit"
            " WHERE actor = %s AND action = %s AND idempotency_key = %s",
            (actor, action.value, idempotency_key),
        )
        row = await cur.fetchone()
    return audit_view(row) if row else None


async def list_actions(
    conn: AsyncConnection, *, limit: int, before_id: int | None = None, action: Action | None = None
) -> list[dict[str, Any]]:
    """Newest first; ``before_id`` pages on (ids grow with time)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT id, at, actor, action, target, counts, idempotency_key FROM operator_audit"
            " WHERE (%(before)s::bigint IS NULL OR id < %(before)s)"
            " AND (%(action)s::text IS NULL OR action = %(action)s)"
            " ORDER BY id DESC LIMIT %(limit)s",
            {"before": before_id, "action": action.value if action else None, "limit": limit},
        )
        return [audit_view(row) for row in await cur.fetchall()]


def audit_view(row: dict[str, Any]) -> dict[str, Any]:
    at: datetime = row["at"]
    return {"id": int(row["id"]), "at": at.isoformat().replace("+00:00", "Z"), "actor": row["actor"],
            "action": row["action"], "target": row["target"], "counts": row["counts"],
            "idempotencyKey": row["idempotency_key"]}
