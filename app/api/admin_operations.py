"""Operators' endpoints (ADMIN): find generations, retry failed poses, pause and resume, read the audit.

Every action (a retry's dry run and execution, each pause and resume) is written to the audit log in
the transaction that does it (:mod:`app.domain.audit`); the caller is the admin token's subject.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import msgspec
import psycopg
from litestar import Controller, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotFoundException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, Parameter, QueryParameter
from litestar.status_codes import HTTP_200_OK
from psycopg import AsyncConnection

from app.api.admin_schemas import (
    AdminGenerationPage,
    AdminGenerationRow,
    AuditEntry,
    AuditPage,
    ErrorTypeName,
    GenerationFilterBody,
    GenerationStatus,
    IntakeState,
    PauseRequest,
    PauseState,
    ResumeRequest,
    RetryAnswer,
    RetryCounts,
    RetryProgress,
    RetryRequest,
)
from app.api.auth import authenticate, require_admin
from app.api.deps import Caller, DatabaseConnection
from app.api.error_responses import ValidationFailed
from app.api.openapi import error_responses
from app.api.schemas import UserId
from app.api.state import api_state
from app.domain import intake
from app.domain.audit import Action, find_action, list_actions, record_action
from app.domain.generation_search import GenerationFilter, search_generations
from app.domain.retries import execute_retry, plan_retry, retry_progress
from app.observability.logging import get_logger
from app.queue import generation_job, make_retry_queue

log = get_logger("API")

RetryIdempotencyKey = Annotated[
    str | None,
    HeaderParameter(name="Idempotency-Key", required=False, min_length=1, max_length=200,
                    description="Required to execute (dryRun false): the same key answers the first result."),
]

HasFailedPoses = Annotated[
    bool | None,
    QueryParameter(name="hasFailedPoses",
                   description="true: finished generations with at least one failed pose, the failed ones and the "
                               "completed ones some of whose poses failed (what a retry acts on); false: the others."),
]


async def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    require_admin(await authenticate(connection))  # type: ignore[arg-type]


def sentry_issues_url(dsn: str, generation_id: str) -> str | None:
    """Sentry's issue search for a generation's tag, from the DSN (``https://key@host/project``); the
    ingest host of sentry.io (``o1.ingest.sentry.io``) is mapped to its web host."""
    if not dsn:
        return None
    parts = urlsplit(dsn)
    host = (parts.hostname or "").split(".ingest.", 1)[-1]
    project = parts.path.strip("/").rsplit("/", 1)[-1]
    port = f":{parts.port}" if parts.port else ""
    return (f"{parts.scheme}://{host}{port}/issues/?project={quote(project)}"
            f"&query={quote('generationId:' + generation_id)}")


def _filter_from(body: GenerationFilterBody | None, generation_id: str | None = None) -> GenerationFilter:
    body = body or GenerationFilterBody()
    return GenerationFilter(
        generation_id=generation_id, status=body.status, error_type=body.errorType, user_id=body.userId,
        created_from=body.createdFrom, created_to=body.createdTo, finished_from=body.finishedFrom,
        finished_to=body.finishedTo, has_failed_poses=body.hasFailedPoses,
    )


def _rows(request: Request, rows: list[dict[str, Any]]) -> list[AdminGenerationRow]:
    dsn = api_state(request).settings.sentry_dsn
    return [AdminGenerationRow(**row, sentryUrl=sentry_issues_url(dsn, row["generationId"])) for row in rows]


class OperatorController(Controller):
    path = "/admin"
    tags = ["operators"]
    guards = [admin_only]

    @get("/generations", summary="Find generations (ADMIN): filters, newest first, cursor pages",
         responses=error_responses(401, 403, 422))
    async def find(
        self, request: Request, db: DatabaseConnection,
        status: FromQuery[GenerationStatus | None] = None,
        error_type: Annotated[ErrorTypeName | None, QueryParameter(name="errorType")] = None,
        user_id: Annotated[UserId | None, QueryParameter(name="userId")] = None,
        created_from: Annotated[datetime | None, QueryParameter(name="createdFrom")] = None,
        created_to: Annotated[datetime | None, QueryParameter(name="createdTo")] = None,
        finished_from: Annotated[datetime | None, QueryParameter(name="finishedFrom")] = None,
        finished_to: Annotated[datetime | None, QueryParameter(name="finishedTo")] = None,
        has_failed_poses: HasFailedPoses = None,
        cursor: Annotated[str | None, Parameter(max_length=300)] = None,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
    ) -> AdminGenerationPage:
        wanted = GenerationFilter(status=status, error_type=error_type, user_id=user_id,
                                  created_from=created_from, created_to=created_to,
                                  finished_from=finished_from, finished_to=finished_to,
                                  has_failed_poses=has_failed_poses)
        return await find_generations(request, db, wanted, limit=limit, cursor=cursor)

    @get("/generations/{generation_id:str}", summary="One generation with its attempts (ADMIN)",
         responses=error_responses(401, 403, 404))
    async def find_one(self, request: Request, db: DatabaseConnection,
                       generation_id: FromPath[str]) -> AdminGenerationRow:
        rows, _ = await search_generations(db, GenerationFilter(generation_id=generation_id), limit=1)
        if not rows:
            raise NotFoundException(f"generation {generation_id} not found")
        return _rows(request, rows)[0]

    @post("/retries", status_code=HTTP_200_OK,
          summary="Retry failed poses (ADMIN): dry run first, then execute with an Idempotency-Key",
          description="Applies to finished generations with failed poses that match `generationId` or "
                      "`filter`. `charge: false` retries on the house (a `waiver` ledger row records it); "
                      "`charge: true` charges like a new generation and refuses users who cannot pay.",
          responses=error_responses(401, 403, 415, 422))
    async def retry(
        self, request: Request, db: DatabaseConnection, principal: Caller, data: JSONBody[RetryRequest],
        idempotency_key: RetryIdempotencyKey = None,
    ) -> Response[RetryAnswer]:
        answer = await run_retry(request, db, principal.user_id, data, idempotency_key)
        return Response(answer, headers={"Idempotent-Replayed": "true"} if answer.replayed else {})

    @get("/retries/{audit_id:int}", summary="Progress of an executed retry (ADMIN)",
         responses=error_responses(401, 403, 404))
    async def retry_status(self, db: DatabaseConnection, audit_id: FromPath[int]) -> RetryProgress:
        return await find_retry_progress(db, audit_id)

    @get("/pause", summary="Whether intake and workers are paused (ADMIN)", responses=error_responses(401, 403))
    async def read_pause(self, request: Request) -> PauseState:
        return await pause_state(request)

    @post("/pause", status_code=HTTP_200_OK,
          summary="Pause intake (POST /generations answers 503 with Retry-After) and/or workers (drain) (ADMIN)",
          responses=error_responses(401, 403, 415, 422))
    async def pause(self, request: Request, db: DatabaseConnection, principal: Caller,
                    data: JSONBody[PauseRequest]) -> PauseState:
        return await run_pause(request, db, principal.user_id, data)

    @post("/resume", status_code=HTTP_200_OK, summary="Resume intake and/or workers (ADMIN)",
          responses=error_responses(401, 403, 415, 422))
    async def resume(self, request: Request, db: DatabaseConnection, principal: Caller,
                     data: JSONBody[ResumeRequest]) -> PauseState:
        return await run_resume(request, db, principal.user_id, data)

    @get("/audit", summary="The operators' audit log, newest first (ADMIN)", responses=error_responses(401, 403, 422))
    async def audit(
        self, db: DatabaseConnection,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
        before: Annotated[int | None, Parameter(ge=1, description="Entries with a smaller id (the next page)")] = None,
        action: FromQuery[Action | None] = None,
    ) -> AuditPage:
        entries = await list_actions(db, limit=limit, before_id=before, action=action)
        next_before = entries[-1]["id"] if len(entries) == limit else None
        return AuditPage(entries=[AuditEntry(**e) for e in entries], nextBefore=next_before)


# The actions, shared by the JSON endpoints and the console page (app.api.admin_console), so the console
# can do nothing the endpoints do not.


async def run_retry(
    request: Request, db: AsyncConnection, actor: str, data: RetryRequest, idempotency_key: str | None
) -> RetryAnswer:
    """Dry-run or execute a retry as ``actor``; raises ValidationFailed or a DomainError (422) naming what is
    wrong."""
    if (data.generationId is None) == (data.filter is None):
        raise ValidationFailed("generationId", "give exactly one of generationId and filter")
    wanted = _filter_from(data.filter, data.generationId)
    settings = api_state(request).settings
    if data.dryRun:
        async with db.transaction():
            plan = await plan_retry(db, wanted, charge=data.charge)
            audit = await record_action(db, actor, Action.RETRY_DRY_RUN, wanted.as_json(), plan.counts())
        return _retry_answer(True, audit)
    if idempotency_key is None:
        raise ValidationFailed("Idempotency-Key", "executing a retry (dryRun false) needs an Idempotency-Key")
    earlier = await find_action(db, actor, Action.RETRY, idempotency_key)
    if earlier is None:
        try:
            result = await execute_retry(db, wanted, charge=data.charge, actor=actor,
                                         idempotency_key=idempotency_key,
                                         queued_check_seconds=settings.queued_check_seconds)
        except psycopg.errors.UniqueViolation:
            earlier = await find_action(db, actor, Action.RETRY, idempotency_key)
            assert earlier is not None
    if earlier is not None:
        asked = {"target": wanted.as_json(), "charge": data.charge}
        done = {"target": earlier["target"], "charge": bool(earlier["counts"].get("charge"))}
        if asked != done:  # a replay answers only the request that made it: same generations, same charge
            raise ValidationFailed("Idempotency-Key", f"Idempotency-Key {idempotency_key!r} was already used for a "
                                   f"different retry (audit entry {earlier['id']}: {done['target']}, charge "
                                   f"{str(done['charge']).lower()}); use a new key for a new retry")
        return _retry_answer(False, earlier, replayed=True)
    await _enqueue_retries(request, result.jobs)
    log.info("Retry executed", auditId=result.audit["id"], actor=actor, **{
        k: v for k, v in result.audit["counts"].items() if k in ("generations", "poses", "credits")})
    return _retry_answer(False, result.audit)


async def run_pause(request: Request, db: AsyncConnection, actor: str, data: PauseRequest) -> PauseState:
    redis = api_state(request).redis
    audit: list[dict[str, Any]] = []
    if data.scope in ("intake", "all"):
        changed = await asyncio.to_thread(intake.pause_intake, redis, actor, data.reason, data.retryAfterSeconds)
        audit.append(await record_action(db, actor, Action.PAUSE_INTAKE,
                                         {"reason": data.reason, "retryAfterSeconds": data.retryAfterSeconds},
                                         {"changed": changed}))
        api_state(request).intake_gate.remember(await asyncio.to_thread(intake.read_intake_pause, redis))
    if data.scope in ("workers", "all"):
        changed = await asyncio.to_thread(intake.pause_workers, redis)
        audit.append(await record_action(db, actor, Action.PAUSE_WORKERS, {"reason": data.reason},
                                         {"changed": changed}))
    log.warning("Paused", scope=data.scope, actor=actor, reason=data.reason)
    return await pause_state(request, audit)


async def run_resume(request: Request, db: AsyncConnection, actor: str, data: ResumeRequest) -> PauseState:
    redis = api_state(request).redis
    audit: list[dict[str, Any]] = []
    if data.scope in ("intake", "all"):
        changed = await asyncio.to_thread(intake.resume_intake, redis)
        api_state(request).intake_gate.remember(None)
        audit.append(await record_action(db, actor, Action.RESUME_INTAKE, {}, {"changed": changed}))
    if data.scope in ("workers", "all"):
        changed = await asyncio.to_thread(intake.resume_workers, redis)
        audit.append(await record_action(db, actor, Action.RESUME_WORKERS, {}, {"changed": changed}))
    log.warning("Resumed", scope=data.scope, actor=actor)
    return await pause_state(request, audit)


async def find_generations(
    request: Request, db: AsyncConnection, wanted: GenerationFilter, *, limit: int, cursor: str | None
) -> AdminGenerationPage:
    rows, next_cursor = await search_generations(db, wanted, limit=limit, cursor=cursor)
    return AdminGenerationPage(generations=_rows(request, rows), nextCursor=next_cursor, limit=limit)


async def find_retry_progress(db: AsyncConnection, audit_id: int) -> RetryProgress:
    progress = await retry_progress(db, audit_id)
    if not progress["total"]:
        cur = await db.execute("SELECT 1 FROM operator_audit WHERE id = %s AND action = 'retry'", (audit_id,))
        if await cur.fetchone() is None:
            raise NotFoundException(f"no executed retry with audit id {audit_id}")
    return RetryProgress(auditId=audit_id, **progress)


def _retry_answer(dry_run: bool, audit: dict[str, Any], replayed: bool = False) -> RetryAnswer:
    return RetryAnswer(dryRun=dry_run, counts=msgspec.convert(audit["counts"], type=RetryCounts),
                       audit=AuditEntry(**audit), replayed=replayed)


async def _enqueue_retries(request: Request, jobs: list[tuple[str, int]]) -> None:
    """Enqueue the retried generations' jobs on the retry queue. A failure here loses nothing: they are
    queued in the database, and the reaper re-enqueues a queued generation whose job is missing."""
    if not jobs:
        return
    queue = make_retry_queue(api_state(request).redis)
    try:
        await asyncio.to_thread(queue.enqueue_many, [generation_job(g, attempt) for g, attempt in jobs])
    except Exception as exc:  # noqa: BLE001 - recovered by the reaper, said in the log
        log.error("Could not enqueue retried generations; the reaper will", exc_info=exc, count=len(jobs))


async def pause_state(request: Request, audit: list[dict[str, Any]] | None = None) -> PauseState:
    redis = api_state(request).redis
    pause = await asyncio.to_thread(intake.read_intake_pause, redis)
    paused = await asyncio.to_thread(intake.workers_paused, redis)
    states = await asyncio.to_thread(intake.worker_states, redis)
    intake_state = IntakeState(paused=False) if pause is None else IntakeState(paused=True, **pause.as_json())
    return PauseState(intake=intake_state, workersPaused=paused, workers=states,
                      audit=[AuditEntry(**a) for a in audit or []])
