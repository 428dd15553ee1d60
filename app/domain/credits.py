"""Credits: one balance row per user and an append-only ledger (grant, charge, refund).

Every balance change appends its ledger row in the same transaction, and the
``balance >= 0`` check plus the guarded ``UPDATE`` keep the balance from going
negative under any concurrency. Partial unique indexes make a second charge of a
generation or a second refund of a pose impossible. Grants and refunds are here; the
charge is part of creating a generation, in ``app/db/functions/posegen_create_generation.sql``.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from app.errors import DomainError, ErrorType


class InsufficientCreditsError(DomainError):
    """The balance does not cover the cost of the request."""

    error_type = ErrorType.CREDIT_ERROR

    def __init__(self, balance: int, required: int) -> None:
        super().__init__(f"insufficient credits: balance {balance}, required {required}")
        self.balance = balance
        self.required = required

    @property
    def detail(self) -> str:
        """``Insufficient credits: <required> required, balance <balance>``."""
        return f"Insufficient credits: {self.required} required, balance {self.balance}"

    def facts(self) -> dict[str, Any]:
        """The credits the request needs and the caller's balance."""
        return {"required": self.required, "balance": self.balance}


async def ensure_account(conn: AsyncConnection, user_id: str) -> None:
    """A user unknown so far starts at balance 0."""
    await conn.execute(
        "INSERT INTO credit_accounts (user_id) VALUES (%s) ON CONFLICT (user_id) DO NOTHING", (user_id,)
    )


async def _add_credits(
    conn: AsyncConnection,
    user_id: str,
    amount: int,
    kind: str,
    *,
    generation_id: str | None = None,
    generation_pose_id: int | None = None,
    created_by: str | None = None,
    run: int = 1,
) -> int:
    """Raise the balance and append its ledger row (grant or refund); returns the new balance."""
    cur = await conn.execute(
        "UPDATE credit_accounts SET balance = balance + %s, updated_at = now() WHERE user_id = %s RETURNING balance",
        (amount, user_id),
    )
    (balance,) = await cur.fetchone()  # type: ignore[misc]
    await conn.execute(
        "INSERT INTO credit_ledger (user_id, kind, amount, balance_after, generation_id, generation_pose_id,"
        " created_by, run) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (user_id, kind, amount, balance, generation_id, generation_pose_id, created_by, run),
    )
    return int(balance)


async def grant_credits(conn: AsyncConnection, user_id: str, amount: int, granted_by: str) -> int:
    """Add ``amount`` credits; returns the new balance. Runs in its own transaction."""
    async with conn.transaction():
        await ensure_account(conn, user_id)
        return await _add_credits(conn, user_id, amount, "grant", created_by=granted_by)


async def refund_failed_pose(
    conn: AsyncConnection, user_id: str, generation_id: str, generation_pose_id: int, amount: int, run: int = 1
) -> int:
    """Give back one failed pose's price inside the caller's transaction; returns the new balance.

    The caller moves the pose from pending to failed in the same transaction, so
    this runs once per pose and run (a retried pose runs again); the unique index on
    refunds backs that up.
    """
    balance = await _add_credits(
        conn, user_id, amount, "refund", generation_id=generation_id, generation_pose_id=generation_pose_id,
        run=run,
    )
    await conn.execute(
        "UPDATE generations SET credits_refunded = credits_refunded + %s WHERE id = %s",
        (amount, generation_id),
    )
    return balance


async def account_summary(conn: AsyncConnection, user_id: str, ledger_limit: int = 20) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT balance FROM credit_accounts WHERE user_id = %s", (user_id,))
        account = await cur.fetchone()
        await cur.execute(
            "SELECT id, kind, amount, balance_after, generation_id, created_at FROM credit_ledger"
            " WHERE user_id = %s ORDER BY id DESC LIMIT %s",
            (user_id, ledger_limit),
        )
        ledger = await cur.fetchall()
    return {"userId": user_id, "balance": int(account["balance"]) if account else 0, "ledger": ledger}
