"""Credit endpoints: own balance and ledger; admin grants."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_201_CREATED

from app.api.auth import require_admin
from app.api.deps import Caller, DatabaseConnection
from app.api.openapi import error_responses
from app.api.schemas import CreditAccount, GrantRequest, GrantResult, LedgerEntry
from app.domain.credits import account_summary, grant_credits
from app.observability.logging import get_logger
from app.timestamps import iso_or_none

log = get_logger("API")


class CreditController(Controller):
    path = "/credits"
    tags = ["credits"]

    @get("/", summary="The caller's balance and recent ledger entries", responses=error_responses(401))
    async def own(self, db: DatabaseConnection, principal: Caller) -> CreditAccount:
        summary = await account_summary(db, principal.user_id)
        return CreditAccount(
            userId=summary["userId"], balance=summary["balance"],
            ledger=[
                LedgerEntry(id=e["id"], kind=e["kind"], amount=e["amount"], balanceAfter=e["balance_after"],
                            generationId=e["generation_id"], createdAt=iso_or_none(e["created_at"]) or "")
                for e in summary["ledger"]
            ],
        )

    @post("/grants", status_code=HTTP_201_CREATED, summary="Grant credits to a user (ADMIN)",
          responses=error_responses(401, 403, 406, 413, 415, 422))
    async def grant(self, data: JSONBody[GrantRequest], db: DatabaseConnection, principal: Caller) -> GrantResult:
        require_admin(principal)
        balance = await grant_credits(db, data.userId, data.amount, granted_by=principal.user_id)
        log.info("Credits granted", userId=data.userId, amount=data.amount, grantedBy=principal.user_id)
        return GrantResult(userId=data.userId, amount=data.amount, balance=balance)
