"""Generation endpoints: create (charge + enqueue), read one, list own."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

from litestar import Controller, MediaType, Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.exceptions import HTTPException, NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, Parameter
from litestar.response.base import ASGIResponse
from litestar.status_codes import (
    HTTP_202_ACCEPTED,
    HTTP_304_NOT_MODIFIED,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from app import API_PREFIX
from app.api.auth import authenticate
from app.api.deps import Caller, DatabaseConnection
from app.api.error_responses import RETRY_AFTER_UNAVAILABLE, ValidationFailed
from app.api.openapi import error_responses
from app.api.rate_limit import refusal_is_free
from app.api.schemas import (
    GenerationAccepted,
    GenerationPage,
    GenerationSummary,
    GenerationView,
)
from app.api.state import api_state
from app.db.connect import API_DB_SECONDS, bounded
from app.domain.credits import InsufficientCreditsError
from app.domain.error_events import record_error_event
from app.domain.generations import (
    GenerationRequest,
    UnknownPosesError,
    abandon_unqueued_generation,
    list_generations,
)
from app.errors import ErrorType
from app.observability import tracing
from app.observability.logging import get_logger
from app.queue import enqueue_generation
from app.timestamps import iso_or_none

if TYPE_CHECKING:
    # Built per app from POSEGEN_MAX_POSES (schemas.create_generation_request_type) and handed to Litestar
    # through the router's signature namespace, so validation and the OpenAPI schema show the configured limit.
    from msgspec import Struct as CreateGenerationRequest

log = get_logger("API")

# A poll's answer changes until the generation finishes and its image URLs expire: caches must ask again
# every time (If-None-Match with the ETag answers 304 when nothing changed).
POLL_CACHE_CONTROL = "private, no-cache"

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(name="Idempotency-Key", required=False, min_length=1, max_length=200,
                    description="Repeat a request safely: the same key returns the first generation, charged once."),
]


class GenerationController(Controller):
    path = "/generations"
    tags = ["generations"]

    @post("/", status_code=HTTP_202_ACCEPTED, summary="Create a generation",
          response_headers=[ResponseHeader(name="Location", documentation_only=True,
                                           description="Where to poll the generation")],
          responses=error_responses(401, 402, 406, 413, 415, 422, 429, 503))
    async def create(
        self, request: Request, data: JSONBody[CreateGenerationRequest], principal: Caller,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[GenerationAccepted]:
        state = api_state(request)
        pause = await state.intake_gate.current()
        if pause is not None:  # a planned pause: refused before anything is charged, and free for the caller
            refusal_is_free(request)
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
                # The operator's reason is for operators (admin pause state, console, audit), not for every user.
                detail="Intake is paused for planned maintenance; nothing was charged. Retry after the "
                       f"Retry-After seconds ({pause.retry_after_seconds}).",
                headers={"Retry-After": str(pause.retry_after_seconds)},
                extra={"errorType": ErrorType.NETWORK_ERROR.value, "paused": True},
            )
        pose_ids = list(data.poseIds)  # type: ignore[attr-defined]
        prompt = data.prompt.strip()  # type: ignore[attr-defined]
        if not prompt:
            raise ValidationFailed("prompt", "prompt must not be blank")
        if "\x00" in prompt:
            raise ValidationFailed("prompt", "prompt must not contain NUL characters")
        # Text PostgreSQL cannot store (lone surrogates) is refused here, before it can join a batch of
        # creates and fail the others with it (UnicodeError answers 422).
        prompt.encode("utf-8")
        wanted = GenerationRequest(principal.user_id, pose_ids, prompt, idempotency_key,
                                   tracing.current_trace_context())
        try:
            created = await state.creator.create(wanted)
        except (UnknownPosesError, InsufficientCreditsError) as exc:
            # Recorded as an error event, then answered as every DomainError is (app/api/error_responses.py).
            await self._record_error(request, exc.error_type, str(exc), principal.user_id)
            raise
        if created.created:
            await self._enqueue(request, created.generation_id, created.attempt)
            log.info("Generation accepted", generationId=created.generation_id, userId=principal.user_id,
                     poseCount=len(pose_ids), creditsCharged=created.credits_charged)
        body = GenerationAccepted(created.generation_id, created.status, created.credits_charged,
                                  iso_or_none(created.created_at) or "")
        headers = {"Location": f"{API_PREFIX}/generations/{created.generation_id}"}
        if not created.created:
            headers["Idempotent-Replayed"] = "true"
        return Response(body, status_code=HTTP_202_ACCEPTED, headers=headers)

    @staticmethod
    async def _record_error(request: Request, error_type: ErrorType, message: str, user_id: str) -> None:
        # Bounded per caller: a flood of bad requests must not write a row each (nor own on-call's error charts).
        if not await api_state(request).caller_limits.may_record_error_event(user_id, error_type):
            return
        async with api_state(request).pool.connection() as db:
            await record_error_event(db, error_type, "API", message, user_id=user_id)

    @staticmethod
    async def _enqueue(request: Request, generation_id: str, attempt: int) -> None:
        enqueuer = api_state(request).enqueuer
        try:
            # The Redis client is synchronous; keep it off the event loop.
            if enqueuer is not None:
                await enqueuer.enqueue(generation_id, attempt)
            else:
                await asyncio.to_thread(enqueue_generation, api_state(request).queue, generation_id, attempt)
        except Exception as exc:
            log.error("Queue unreachable; generation refunded", exc_info=exc, generationId=generation_id)
            async with bounded(API_DB_SECONDS), api_state(request).pool.connection() as db:
                await abandon_unqueued_generation(db, generation_id, f"queue unreachable: {type(exc).__name__}")
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
                detail="The generation queue is unavailable; nothing was charged. Retry later.",
                extra={"errorType": ErrorType.NETWORK_ERROR.value}, headers={"Retry-After": RETRY_AFTER_UNAVAILABLE},
            ) from None

    @get("/{generation_id:str}", summary="One generation with its per-pose results",
         responses={200: ResponseSpec(data_container=GenerationView, description="The generation",
                                      generate_examples=False), **error_responses(401, 404, 406)},
         response_headers=[ResponseHeader(name="ETag", documentation_only=True,
                                          description="Send as If-None-Match: 304 while nothing changed"),
                           ResponseHeader(name="Cache-Control", documentation_only=True,
                                          description=POLL_CACHE_CONTROL)])
    async def read(self, request: Request, generation_id: FromPath[str]) -> ASGIResponse:
        # The hottest route: the caller is resolved by a plain call rather than by dependency injection,
        # which costs a twentieth of this request's CPU (bench/api_throughput.py).
        principal = await authenticate(request)
        record = await api_state(request).generation_reader.get(generation_id)
        if record is None or (record.user_id != principal.user_id and not principal.is_admin):
            raise NotFoundException(f"generation {generation_id} not found")
        # The body is the GenerationView, encoded once per read batch (see generation_reads), answered as
        # it is: Litestar's Response would only re-check and copy it.
        headers = {"ETag": record.etag, "Cache-Control": POLL_CACHE_CONTROL}
        if_none_match = next((value for name, value in request.scope["headers"] if name == b"if-none-match"), None)
        if if_none_match is not None and _matches(record.etag, if_none_match.decode("latin-1")):
            return ASGIResponse(status_code=HTTP_304_NOT_MODIFIED, headers=headers)
        return ASGIResponse(body=record.body, media_type=MediaType.JSON, headers=headers)

    @get("/", summary="The caller's generations, newest first", responses=error_responses(401, 406, 422))
    async def list_own(
        self, db: DatabaseConnection, principal: Caller,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 20,
        offset: Annotated[int, Parameter(ge=0, le=1_000_000)] = 0,
    ) -> GenerationPage:
        rows, total = await list_generations(db, principal.user_id, limit=limit, offset=offset)
        return GenerationPage(
            generations=[
                GenerationSummary(
                    generationId=r["generationId"], status=r["status"], prompt=r["prompt"],
                    posesCount=r["posesCount"], createdAt=iso_or_none(r["createdAt"]) or "",
                    finishedAt=iso_or_none(r["finishedAt"]), durationMs=r["durationMs"],
                    creditsCharged=r["creditsCharged"], creditsRefunded=r["creditsRefunded"],
                    errorType=r["errorType"],
                )
                for r in rows
            ],
            total=total, limit=limit, offset=offset,
        )



def _matches(etag: str, if_none_match: str) -> bool:
    """Whether an If-None-Match header names ``etag`` or is ``*`` (weak comparison, RFC 9110 13.1.2)."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags
