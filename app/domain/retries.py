"""Retrying failed poses: plan (dry run), execute, and follow a retry batch.

A retry applies to finished generations (completed or failed) that match a
:class:`~app.domain.generation_search.GenerationFilter` and still have failed poses. In one
transaction, per generation: the failed poses' outcomes are archived (``generation_pose_attempts``),
the poses go back to pending under the generation's next run, the run is recorded with who asked
(``generation_runs``), the credits are settled, and the generation is queued under a new attempt.
The caller enqueues the returned jobs after the commit; a job lost on the way is re-queued by the
reaper like any other queued generation.

Credits are explicit:

- ``charge=False`` (on the house): a ``waiver`` ledger row records the price not charged and why;
  the balance does not move, and a pose that fails again refunds nothing (nothing was paid).
- ``charge=True``: a ``charge`` ledger row for the run, exactly like a new generation; a user whose
  balance cannot pay all their retried poses is refused (listed, nothing of theirs retried).

Running the same retry again changes nothing: the generations it retried are no longer finished with
failed poses (and a repeated Idempotency-Key answers the first result without running at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from app.domain.audit import Action, record_action, reserve_audit_id
from app.domain.generation_search import GenerationFilter
from app.errors import DomainError

# One request retries at most this many generations; a wider filter must be narrowed (or run in parts).
MAX_GENERATIONS_PER_RETRY = 10_000


class TooManyGenerationsError(DomainError):
    """A retry's filter matches more generations than one retry may take."""

    field = "filter"

    def __init__(self, matched: int) -> None:
        super().__init__(f"the filter matches {matched} retryable generations; at most "
                         f"{MAX_GENERATIONS_PER_RETRY} per retry: narrow it (e.g. a created or finished window)")
        self.matched = matched


@dataclass
class RetryPlan:
    """What a retry touches: generations (id, user, run, attempt, failed poses, price), and per user the
    credits it costs and, with ``charge``, whether their balance can pay."""

    charge: bool
    generations: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        return {
            "generations": len(self.generations),
            "poses": sum(g["failed_poses"] for g in self.generations),
            "users": len({g["user_id"] for g in self.generations}),
            "credits": sum(g["failed_poses"] * g["price_per_pose"] for g in self.generations),
            "charge": self.charge,
            "refusedUsers": self.refused,
        }


_CANDIDATES_SQL = """
SELECT g.id, g.user_id, g.run, g.attempt, g.price_per_pose,
       (SELECT count(*) FROM generation_poses p WHERE p.generation_id = g.id AND p.status = 'failed') AS failed_poses
  FROM generations g
 WHERE {where} AND g.status IN ('completed', 'failed')
   AND EXISTS (SELECT 1 FROM generation_poses p WHERE p.generation_id = g.id AND p.status = 'failed')
 ORDER BY g.user_id, g.id
 LIMIT %(cap)s
"""


async def plan_retry(conn: AsyncConnection, wanted: GenerationFilter, *, charge: bool, lock: bool = False) -> RetryPlan:
    """The generations a retry of ``wanted`` would touch now. ``lock`` (inside a transaction) holds their
    rows and the users' balances until commit, so the plan is what gets executed. Raises
    :class:`TooManyGenerationsError`."""
    where, params = wanted.where()
    params["cap"] = MAX_GENERATIONS_PER_RETRY + 1
    query = sql.SQL(_CANDIDATES_SQL).format(where=where)
    if lock:
        query = sql.SQL("{} FOR UPDATE OF g").format(query)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        rows = await cur.fetchall()
    if len(rows) > MAX_GENERATIONS_PER_RETRY:
        raise TooManyGenerationsError(len(rows))
    plan = RetryPlan(charge=charge, generations=rows)
    if charge and rows:
        await _refuse_short_balances(conn, plan, lock=lock)
    return plan


async def _refuse_short_balances(conn: AsyncConnection, plan: RetryPlan, *, lock: bool) -> None:
    cost: dict[str, int] = {}
    for g in plan.generations:
        cost[g["user_id"]] = cost.get(g["user_id"], 0) + g["failed_poses"] * g["price_per_pose"]
    users = sorted(cost)
    query = "SELECT user_id, balance FROM credit_accounts WHERE user_id = ANY(%s) ORDER BY user_id"
    cur = await conn.execute(query + (" FOR UPDATE" if lock else ""), (users,))
    balances = {user: int(balance) for user, balance in await cur.fetchall()}
    short = {u for u in users if balances.get(u, 0) < cost[u]}
    plan.refused = [{"userId": u, "required": cost[u], "balance": balances.get(u, 0)} for u in sorted(short)]
    plan.generations = [g for g in plan.generations if g["user_id"] not in short]


@dataclass(frozen=True)
class RetryResult:
    audit: dict[str, Any]
    # (generation id, attempt) of each job to enqueue.
    jobs: list[tuple[str, int]]


async def execute_retry(
    conn: AsyncConnection,
    wanted: GenerationFilter,
    *,
    charge: bool,
    actor: str,
    idempotency_key: str,
    queued_check_seconds: float,
) -> RetryResult:
    """Retry the failed poses of the generations ``wanted`` matches, in one transaction with its audit row.

    Raises :class:`TooManyGenerationsError`, and ``psycopg.errors.UniqueViolation`` when another request
    with this actor and idempotency key committed first (the caller answers that one's result)."""
    async with conn.transaction():
        plan = await plan_retry(conn, wanted, charge=charge, lock=True)
        audit_id = await reserve_audit_id(conn)
        jobs = [await _retry_generation(conn, g, charge=charge, actor=actor, audit_id=audit_id,
                                        queued_check_seconds=queued_check_seconds)
                for g in plan.generations]
        audit = await record_action(conn, actor, Action.RETRY, wanted.as_json(), plan.counts(),
                                    idempotency_key=idempotency_key, audit_id=audit_id)
    return RetryResult(audit, jobs)


async def _retry_generation(
    conn: AsyncConnection, g: dict[str, Any], *, charge: bool, actor: str, audit_id: int,
    queued_check_seconds: float,
) -> tuple[str, int]:
    generation_id, user_id = g["id"], g["user_id"]
    run, attempt = g["run"] + 1, g["attempt"] + 1
    poses, price = g["failed_poses"], g["price_per_pose"]
    cost = poses * price
    await conn.execute(
        "INSERT INTO generation_pose_attempts (generation_pose_id, run, status, charged, error_type, error_message,"
        " provider_ms, duration_ms, started_at, finished_at)"
        " SELECT id, run, status, run_charged, error_type, error_message, provider_ms, duration_ms, started_at,"
        " finished_at FROM generation_poses WHERE generation_id = %s AND status = 'failed'",
        (generation_id,),
    )
    await conn.execute(
        "UPDATE generation_poses SET status = 'pending', run = %s, run_charged = %s, error_type = NULL,"
        " error_message = NULL, image_key = NULL, queue_wait_ms = NULL, controlnet_ms = NULL, provider_ms = NULL,"
        " upload_ms = NULL, duration_ms = NULL, started_at = NULL, finished_at = NULL"
        " WHERE generation_id = %s AND status = 'failed'",
        (run, charge, generation_id),
    )
    if charge:
        cur = await conn.execute(
            "UPDATE credit_accounts SET balance = balance - %s, updated_at = now()"
            " WHERE user_id = %s AND balance >= %s RETURNING balance",
            (cost, user_id, cost),
        )
        row = await cur.fetchone()
        assert row is not None, "balance checked under lock in plan_retry"
        kind, note = "charge", f"retry (audit {audit_id}) by {actor}: {poses} poses charged like a new generation"
        await conn.execute("UPDATE generations SET credits_charged = credits_charged + %s WHERE id = %s",
                           (cost, generation_id))
    else:
        cur = await conn.execute("SELECT balance FROM credit_accounts WHERE user_id = %s FOR UPDATE", (user_id,))
        row = await cur.fetchone()
        kind, note = "waiver", (f"retry on the house (audit {audit_id}) by {actor}: {poses} poses x {price} credits"
                                " not charged")
    await conn.execute(
        "INSERT INTO credit_ledger (user_id, kind, amount, balance_after, generation_id, note, created_by, run)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (user_id, kind, cost, row[0] if row else 0, generation_id, note, actor, run),
    )
    await conn.execute(
        "INSERT INTO generation_runs (generation_id, run, requested_by, charged, poses, credits, audit_id)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (generation_id, run, actor, charge, poses, cost, audit_id),
    )
    await conn.execute(
        "UPDATE generations SET status = 'queued', attempt = %s, run = %s, run_started_at = now(),"
        " lease_expires_at = now() + make_interval(secs => %s), finished_at = NULL, duration_ms = NULL,"
        " error_type = NULL, error_message = NULL WHERE id = %s",
        (attempt, run, queued_check_seconds, generation_id),
    )
    return generation_id, attempt


async def retry_progress(conn: AsyncConnection, audit_id: int) -> dict[str, int]:
    """Where the generations of one executed retry are now: ``total``, ``queued``, ``processing``,
    ``completed``, ``failed`` (status of the run the retry started), ``superseded`` (retried again since)."""
    cur = await conn.execute(
        "SELECT count(*),"
        " count(*) FILTER (WHERE g.run = r.run AND g.status = 'queued'),"
        " count(*) FILTER (WHERE g.run = r.run AND g.status = 'processing'),"
        " count(*) FILTER (WHERE g.run = r.run AND g.status = 'completed'),"
        " count(*) FILTER (WHERE g.run = r.run AND g.status = 'failed'),"
        " count(*) FILTER (WHERE g.run > r.run)"
        " FROM generation_runs r JOIN generations g ON g.id = r.generation_id WHERE r.audit_id = %s",
        (audit_id,),
    )
    row = await cur.fetchone()
    names = ("total", "queued", "processing", "completed", "failed", "superseded")
    return {name: int(value) for name, value in zip(names, row or (0,) * 6, strict=True)}
