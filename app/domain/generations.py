"""Generations as the API sees them: create (charge + insert in one transaction), read, list."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from app.domain.credits import InsufficientCreditsError, refund_failed_pose
from app.domain.error_events import record_error_event
from app.errors import DomainError, ErrorType

# Raised by posegen_create_generation when the balance does not cover the cost (DETAIL: the balance).
INSUFFICIENT_CREDITS_SQLSTATE = "PG402"

class UnknownPosesError(DomainError):
    """The request names poses the library does not have."""

    field = "poseIds"

    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"unknown pose ids: {', '.join(missing)}")
        self.missing = missing


class IdempotencyKeyReusedError(DomainError):
    """An Idempotency-Key already made a generation from a different request (other poses or prompt)."""

    field = "Idempotency-Key"

    def __init__(self, key: str, generation_id: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used for a different request (generation "
                         f"{generation_id}: other poses or prompt); use a new key for a new request")
        self.key = key
        self.generation_id = generation_id

    @property
    def detail(self) -> str:
        """The message alone: it names the header itself."""
        return str(self)


@dataclass(frozen=True)
class CreatedGeneration:
    generation_id: str
    status: str
    credits_charged: int
    attempt: int
    created: bool
    created_at: datetime


def new_generation_id() -> str:
    """Time-ordered ids keep the primary key index append-mostly."""
    return f"gen_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


@dataclass(frozen=True)
class GenerationRequest:
    """One create, as :func:`create_generations` takes it."""

    user_id: str
    pose_ids: list[str]
    prompt: str
    idempotency_key: str | None
    trace_context: dict[str, str] | None = None


async def create_generations(
    conn: AsyncConnection,
    requests: list[GenerationRequest],
    *,
    price_per_pose: int,
    queued_check_seconds: float,
) -> list[CreatedGeneration | Exception]:
    """Charge and insert generations with their pose slots, in one transaction and one round trip (SQL
    functions ``posegen_create_generations`` and ``posegen_create_generation`` in ``app/db/functions/``).

    Each create succeeds or fails alone, atomically. With an ``idempotency_key`` already used by its
    user for the same request (pose ids in order and prompt), the result is that first generation
    (``created=False``), charged nothing; two racing requests with one key serialise on the unique
    constraint. A failed create is its exception in the result list, with nothing written for it:
    :class:`~app.domain.credits.InsufficientCreditsError`, :class:`UnknownPosesError`,
    :class:`IdempotencyKeyReusedError` (the key's generation was made from another request), or the
    psycopg error the statement would have raised.
    """
    items = [
        {"id": new_generation_id(), "userId": r.user_id, "prompt": r.prompt, "poseIds": r.pose_ids,
         "idempotencyKey": r.idempotency_key, "traceContext": r.trace_context}
        for r in requests
    ]
    cur = await conn.execute(
        "SELECT item, outcome, generation_id, status, credits_charged, attempt, created_at, missing,"
        " error_state, error_message, error_detail FROM posegen_create_generations(%s, %s, %s)",
        (Jsonb(items), price_per_pose, queued_check_seconds),
    )
    results: list[CreatedGeneration | Exception] = [RuntimeError("no outcome")] * len(requests)
    for item, outcome, found_id, status, charged, attempt, created_at, missing, state, message, detail in (
        await cur.fetchall()
    ):
        request = requests[item]
        if outcome in ("created", "existing"):
            results[item] = CreatedGeneration(found_id, status, int(charged), int(attempt), outcome == "created",
                                              created_at)
        elif outcome == "unknown_poses":
            results[item] = UnknownPosesError(list(missing))
        elif state == INSUFFICIENT_CREDITS_SQLSTATE:
            results[item] = InsufficientCreditsError(int(detail or 0), len(request.pose_ids) * price_per_pose)
        else:  # the error as psycopg would have raised it for this create alone
            try:
                error_class: type[psycopg.Error] = psycopg.errors.lookup(state)
            except KeyError:
                error_class = psycopg.DatabaseError
            results[item] = error_class(message)
    replayed = [(i, r.generation_id) for i, r in enumerate(results)
                if isinstance(r, CreatedGeneration) and not r.created]
    if replayed:
        # The IETF Idempotency-Key draft: a key reused with another request is an error, not a replay.
        stored = await _request_fingerprints(conn, [generation_id for _, generation_id in replayed])
        for i, generation_id in replayed:
            request = requests[i]
            if stored.get(generation_id) != request_fingerprint(request.pose_ids, request.prompt):
                results[i] = IdempotencyKeyReusedError(request.idempotency_key or "", generation_id)
    return results


def request_fingerprint(pose_ids: list[str], prompt: str) -> tuple[tuple[str, ...], str]:
    """What makes two creates the same request: the pose ids in order and the prompt."""
    return tuple(pose_ids), prompt


async def _request_fingerprints(conn: AsyncConnection, generation_ids: list[str]) -> dict[str, tuple[Any, str]]:
    """The request each generation was created from (its stored pose slots and prompt), by id."""
    cur = await conn.execute(
        "SELECT g.id, g.prompt, array_agg(p.pose_id ORDER BY p.position) FROM generations g"
        " JOIN generation_poses p ON p.generation_id = g.id WHERE g.id = ANY(%s) GROUP BY g.id",
        (generation_ids,),
    )
    return {gid: request_fingerprint(list(pose_ids), prompt) for gid, prompt, pose_ids in await cur.fetchall()}


async def abandon_unqueued_generation(conn: AsyncConnection, generation_id: str, reason: str) -> None:
    """The queue refused the job: fail every pose with NETWORK_ERROR and refund it, at once.

    The idempotency key is released so the client's retry creates a new generation.
    """
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE generations SET status = 'failed', error_type = %s, error_message = %s,"
            " finished_at = now(), duration_ms = (extract(epoch FROM now() - created_at) * 1000)::bigint,"
            " idempotency_key = NULL, lease_expires_at = NULL"
            " WHERE id = %s AND status = 'queued' RETURNING user_id, price_per_pose",
            (ErrorType.NETWORK_ERROR.value, reason, generation_id),
        )
        row = await cur.fetchone()
        if row is None:
            return
        user_id, price = row
        cur = await conn.execute(
            "UPDATE generation_poses SET status = 'failed', error_type = %s, error_message = %s,"
            " finished_at = now() WHERE generation_id = %s AND status = 'pending' RETURNING id",
            (ErrorType.NETWORK_ERROR.value, reason, generation_id),
        )
        for (pose_row_id,) in await cur.fetchall():
            await refund_failed_pose(conn, user_id, generation_id, pose_row_id, price)
        await record_error_event(
            conn, ErrorType.NETWORK_ERROR, "API", reason, user_id=user_id, generation_id=generation_id
        )


_GENERATION_COLUMNS = (
    'g.id AS "generationId", g.user_id AS "userId", g.prompt, g.status, g.created_at AS "createdAt",'
    ' g.finished_at AS "finishedAt", g.duration_ms AS "durationMs", g.credits_charged AS "creditsCharged",'
    ' g.credits_refunded AS "creditsRefunded", g.error_type AS "errorType", g.poses_count AS "posesCount"'
)


async def get_generations(conn: AsyncConnection, generation_ids: list[str]) -> list[dict[str, Any]]:
    """The generations with these ids (those that exist), each with its poses in order, in one round trip."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_GENERATION_COLUMNS}, (SELECT coalesce(json_agg(json_build_object("
            "'poseId', p.pose_id, 'status', p.status, 'errorType', p.error_type, 'imageKey', p.image_key,"
            " 'durationMs', p.duration_ms, 'queueWaitMs', p.queue_wait_ms, 'providerMs', p.provider_ms,"
            " 'uploadMs', p.upload_ms) ORDER BY p.position), '[]') FROM generation_poses p"
            " WHERE p.generation_id = g.id) AS poses FROM generations g WHERE g.id = ANY(%s)",
            (generation_ids,),
        )
        return await cur.fetchall()


async def list_generations(
    conn: AsyncConnection, user_id: str, *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_GENERATION_COLUMNS} FROM generations g WHERE g.user_id = %s"
            " ORDER BY g.created_at DESC, g.id DESC LIMIT %s OFFSET %s",
            (user_id, limit, offset),
        )
        rows = await cur.fetchall()
        await cur.execute("SELECT count(*) AS n FROM generations WHERE user_id = %s", (user_id,))
        total = int((await cur.fetchone())["n"])  # type: ignore[index]
    return rows, total
