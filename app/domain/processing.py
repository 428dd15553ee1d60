"""Generation state as the worker moves it: claim, lease, pose outcomes, finish, and the reaper.

Ownership is the pair ``(generation id, attempt)``: a job only writes while the
generation is ``processing`` under its attempt, so a stale delivery of an
abandoned job can never overwrite the retry's results, and a pose moves out of
``pending`` exactly once (which is what makes its refund happen exactly once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from psycopg import AsyncConnection

from app.domain.credits import refund_failed_pose
from app.domain.error_events import record_error_event
from app.errors import ErrorType
from app.queue import job_id_for


@dataclass(frozen=True)
class PendingPose:
    row_id: int
    position: int
    pose_id: str
    keypoints: list[list[float]]


@dataclass(frozen=True)
class ClaimedGeneration:
    generation_id: str
    attempt: int
    user_id: str
    prompt: str
    price_per_pose: int
    created_at: datetime
    trace_context: dict[str, str] | None
    poses: list[PendingPose] = field(default_factory=list)
    # 1 for the original run; an operator's retry of its failed poses is run 2, 3...
    run: int = 1

    @property
    def is_retry(self) -> bool:
        return self.run > 1


@dataclass(frozen=True)
class PoseTimings:
    queue_wait_ms: int | None = None
    controlnet_ms: int | None = None
    provider_ms: int | None = None
    upload_ms: int | None = None
    duration_ms: int | None = None


# Room for everything around the provider call in a pose (render, upload, database writes).
POSE_OVERHEAD_SECONDS = 60.0
# Added to what a generation can take, before calling it stuck: lease renewals, the finishing writes.
GENERATION_SLACK_SECONDS = 60.0


def pose_deadline_seconds(flux_deadline_seconds: float) -> float:
    """How long one pose may take in all (the provider enforces its own deadline inside it)."""
    return flux_deadline_seconds + POSE_OVERHEAD_SECONDS


def generation_time_limit_seconds(flux_deadline_seconds: float, max_poses: int, pose_concurrency: int) -> float:
    """The longest one attempt of a generation can run: its poses in rounds of ``pose_concurrency``, each
    round within the pose deadline, plus slack. An attempt running longer is stuck (alert GenerationStuck)."""
    rounds = -(-max_poses // pose_concurrency)
    return rounds * pose_deadline_seconds(flux_deadline_seconds) + GENERATION_SLACK_SECONDS


async def claim_generation(
    conn: AsyncConnection, generation_id: str, attempt: int, lease_seconds: float
) -> ClaimedGeneration | None:
    """Move a queued generation to ``processing`` under a lease; None when it is not ours to run."""
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE generations SET status = 'processing', started_at = coalesce(started_at, now()),"
            " attempt_started_at = now(), lease_expires_at = now() + make_interval(secs => %s)"
            " WHERE id = %s AND attempt = %s AND status = 'queued'"
            # A retried run's queue wait starts when the retry queued it.
            " RETURNING user_id, prompt, price_per_pose, coalesce(run_started_at, created_at), trace_context, run",
            (lease_seconds, generation_id, attempt),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        cur = await conn.execute(
            "SELECT gp.id, gp.position, gp.pose_id, p.keypoints FROM generation_poses gp"
            " JOIN poses p USING (pose_id) WHERE gp.generation_id = %s AND gp.status = 'pending'"
            " ORDER BY gp.position",
            (generation_id,),
        )
        poses = [PendingPose(r[0], r[1], r[2], r[3]) for r in await cur.fetchall()]
    return ClaimedGeneration(generation_id, attempt, row[0], row[1], row[2], row[3], row[4], poses, row[5])


async def extend_lease(conn: AsyncConnection, generation_id: str, attempt: int, lease_seconds: float) -> bool:
    """Heartbeat; False when the generation is no longer ours (reaped or finished)."""
    cur = await conn.execute(
        "UPDATE generations SET lease_expires_at = now() + make_interval(secs => %s)"
        " WHERE id = %s AND attempt = %s AND status = 'processing'",
        (lease_seconds, generation_id, attempt),
    )
    return cur.rowcount == 1


_OWNED = "EXISTS (SELECT 1 FROM generations g WHERE g.id = %s AND g.attempt = %s AND g.status = 'processing')"


async def record_pose_success(
    conn: AsyncConnection, claimed: ClaimedGeneration, pose: PendingPose, image_key: str, timings: PoseTimings
) -> bool:
    cur = await conn.execute(
        "UPDATE generation_poses SET status = 'completed', image_key = %s, queue_wait_ms = %s,"
        " controlnet_ms = %s, provider_ms = %s, upload_ms = %s, duration_ms = %s,"
        " started_at = now() - make_interval(secs => %s / 1000.0), finished_at = now()"
        f" WHERE id = %s AND status = 'pending' AND {_OWNED}",
        (image_key, timings.queue_wait_ms, timings.controlnet_ms, timings.provider_ms, timings.upload_ms,
         timings.duration_ms, timings.duration_ms or 0, pose.row_id, claimed.generation_id, claimed.attempt),
    )
    return cur.rowcount == 1


async def record_pose_failure(
    conn: AsyncConnection,
    claimed: ClaimedGeneration,
    pose: PendingPose,
    error_type: ErrorType,
    message: str,
    timings: PoseTimings,
) -> bool:
    """Fail a pending pose, refund its price and record the error, in one transaction."""
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE generation_poses SET status = 'failed', error_type = %s, error_message = %s,"
            " queue_wait_ms = %s, controlnet_ms = %s, provider_ms = %s, upload_ms = %s, duration_ms = %s,"
            " started_at = now() - make_interval(secs => %s / 1000.0), finished_at = now()"
            f" WHERE id = %s AND status = 'pending' AND {_OWNED} RETURNING run, run_charged",
            (error_type.value, message[:2000], timings.queue_wait_ms, timings.controlnet_ms,
             timings.provider_ms, timings.upload_ms, timings.duration_ms, timings.duration_ms or 0,
             pose.row_id, claimed.generation_id, claimed.attempt),
        )
        failed = await cur.fetchone()
        if failed is None:
            return False
        run, charged = failed
        if charged:  # a run on the house cost the user nothing, so there is nothing to give back
            await refund_failed_pose(
                conn, claimed.user_id, claimed.generation_id, pose.row_id, claimed.price_per_pose, run
            )
        await record_error_event(
            conn, error_type, "Worker", message, user_id=claimed.user_id,
            generation_id=claimed.generation_id, generation_pose_id=pose.row_id,
        )
    return True


# The generation's error type is its poses' most frequent one (earliest on a tie).
_FINISH_SQL = """
UPDATE generations g SET
    status = CASE WHEN s.delivered > 0 THEN 'completed' ELSE 'failed' END,
    error_type = s.error_type,
    error_message = s.error_message,
    finished_at = now(),
    duration_ms = (extract(epoch FROM now() - coalesce(g.run_started_at, g.created_at)) * 1000)::bigint,
    lease_expires_at = NULL
FROM (
    SELECT count(*) FILTER (WHERE status = 'completed') AS delivered,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           (SELECT error_type FROM generation_poses WHERE generation_id = %(id)s AND status = 'failed'
             GROUP BY error_type ORDER BY count(*) DESC, min(finished_at) LIMIT 1) AS error_type,
           (SELECT error_message FROM generation_poses WHERE generation_id = %(id)s AND status = 'failed'
             ORDER BY finished_at LIMIT 1) AS error_message
    FROM generation_poses WHERE generation_id = %(id)s
) s
WHERE g.id = %(id)s AND g.attempt = %(attempt)s AND g.status = 'processing' AND s.pending = 0
RETURNING g.status, g.duration_ms, g.error_type
"""


async def finish_generation(
    conn: AsyncConnection, generation_id: str, attempt: int
) -> tuple[str, int, str | None] | None:
    """Close a generation whose poses all have outcomes; returns (status, duration ms, error type)."""
    cur = await conn.execute(_FINISH_SQL, {"id": generation_id, "attempt": attempt})
    row = await cur.fetchone()
    return (row[0], int(row[1]), row[2]) if row else None


class AbandonReason(StrEnum):
    """Why the reaper found an attempt abandoned: the label ``reason`` of the exporter's
    ``pose_generation_requeues_total`` and ``pose_generation_attempts_exhausted_total`` (every value at 0 from
    the first scrape)."""

    LEASE_EXPIRED = "lease_expired"  # its worker stopped renewing the lease (died or froze)
    JOB_LOST = "job_lost"  # its job vanished from the queue


@dataclass(frozen=True)
class ReapResult:
    requeue: list[tuple[str, int]]
    failed: list[str]


async def reap_abandoned(
    conn: AsyncConnection,
    *,
    max_attempts: int,
    job_pending: Callable[[str], bool],
    queued_check_seconds: float,
) -> ReapResult:
    """Find generations whose worker died (lease expired) or whose job vanished from the queue.

    Each is re-queued under a new attempt, or, past ``max_attempts``, finished
    with its unfinished poses failed as TIMEOUT_ERROR and refunded. Safe to run
    from several workers at once (rows are claimed with SKIP LOCKED).
    """
    requeue: list[tuple[str, int]] = []
    failed: list[str] = []
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT id, attempt, status, user_id, price_per_pose FROM generations"
            " WHERE status IN ('queued', 'processing') AND lease_expires_at < now()"
            " ORDER BY lease_expires_at LIMIT 200 FOR UPDATE SKIP LOCKED"
        )
        rows: list[Any] = await cur.fetchall()
        for generation_id, attempt, status, user_id, price in rows:
            if status == "queued" and job_pending(job_id_for(generation_id, attempt)):
                await conn.execute(
                    "UPDATE generations SET lease_expires_at = now() + make_interval(secs => %s) WHERE id = %s",
                    (queued_check_seconds, generation_id),
                )
                continue
            reason = AbandonReason.LEASE_EXPIRED if status == "processing" else AbandonReason.JOB_LOST
            if attempt < max_attempts:
                await conn.execute(
                    "UPDATE generations SET status = 'queued', attempt = attempt + 1,"
                    " lease_expires_at = now() + make_interval(secs => %s) WHERE id = %s",
                    (queued_check_seconds, generation_id),
                )
                await conn.execute("SELECT exporter_count('generation_requeues', %s, 1)", (reason.value,))
                requeue.append((generation_id, attempt + 1))
                continue
            message = f"abandoned: no worker finished it in {attempt} attempts"
            cur = await conn.execute(
                "UPDATE generation_poses SET status = 'failed', error_type = 'TIMEOUT_ERROR',"
                " error_message = %s, finished_at = now()"
                " WHERE generation_id = %s AND status = 'pending' RETURNING id, run, run_charged",
                (message, generation_id),
            )
            for pose_row_id, run, charged in await cur.fetchall():
                if charged:
                    await refund_failed_pose(conn, user_id, generation_id, pose_row_id, price, run)
                await record_error_event(
                    conn, ErrorType.TIMEOUT_ERROR, "Worker", message, user_id=user_id,
                    generation_id=generation_id, generation_pose_id=pose_row_id,
                )
            await conn.execute(
                "UPDATE generations SET status = 'processing' WHERE id = %s AND status = 'queued'",
                (generation_id,),
            )
            await finish_generation(conn, generation_id, attempt)
            await conn.execute("SELECT exporter_count('generation_attempts_exhausted', %s, 1)", (reason.value,))
            failed.append(generation_id)
    return ReapResult(requeue, failed)
