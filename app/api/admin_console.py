"""The operators' console: one server-rendered page (Jinja, no front-end build, no assets from elsewhere).

Failed generations with filters, a generation's attempts, a retry's dry run then execution with its
progress, pause/resume, and the audit log. It signs in with an ADMIN token, kept in an HttpOnly,
SameSite=Strict cookie scoped to the console, and every action calls the same functions as the JSON
endpoints (:mod:`app.api.admin_operations`), so it can do nothing they do not. Forms post only from the
console itself: a POST whose Origin is another site is refused (with the SameSite cookie, no CSRF).
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.params import Body
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_403_FORBIDDEN

from app import API_PREFIX
from app.api.admin_operations import (
    find_generations,
    find_retry_progress,
    pause_state,
    run_pause,
    run_resume,
    run_retry,
)
from app.api.admin_schemas import GenerationFilterBody, PauseRequest, ResumeRequest, RetryRequest
from app.api.auth import Principal, decode_token
from app.domain.audit import list_actions
from app.domain.generation_search import GenerationFilter

CONSOLE_PATH = f"{API_PREFIX}/admin/console"
COOKIE = "posegen_console_token"
FILTER_FIELDS = ("status", "errorType", "userId", "createdFrom", "createdTo", "finishedFrom", "finishedTo",
                 "hasFailedPoses")
Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]


def _principal(request: Request) -> Principal | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    try:
        principal = decode_token(request.app.state.settings.jwt_secret, token)
    except NotAuthorizedException:
        return None
    return principal if principal.is_admin else None


def _same_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin and origin not in ("null", f"{request.url.scheme}://{request.url.netloc}"):
        raise PermissionDeniedException("console forms post only from the console itself")


T = TypeVar("T")


def _form_as(type_: type[T], values: dict[str, Any]) -> T:
    """A form's values as ``type_``; a value of the wrong shape is a 422 naming the field."""
    try:
        return msgspec.convert(values, type=type_, strict=False)
    except msgspec.ValidationError as exc:
        raise HTTPException(status_code=422, detail=f"Validation failed: {exc}") from None


def _filter_body(values: dict[str, str]) -> GenerationFilterBody:
    given = {k: v.strip() for k, v in values.items() if k in FILTER_FIELDS and v and v.strip()}
    return _form_as(GenerationFilterBody, given)


# An id of the audit log is a PostgreSQL bigint: at most 19 digits, and only ASCII ones ("²".isdigit() is True).
_AUDIT_ID = re.compile(r"[0-9]{1,18}")


class ConsoleController(Controller):
    path = "/admin/console"
    include_in_schema = False

    @get("/")
    async def page(self, request: Request) -> Response[Any]:
        principal = _principal(request)
        if principal is None:
            return Template(template_name="console.html", context={"signed_in": False, "base": CONSOLE_PATH,
                                                                   "error": request.query_params.get("error")})
        query = dict(request.query_params)
        if "hasFailedPoses" not in query:
            # What operators come for: every generation with failed poses to retry, the completed ones with
            # some poses failed as well as the failed ones (the form sends the field, "" for any).
            query["hasFailedPoses"] = "true"
        return Template(template_name="console.html",
                        context=await self._context(request, principal, _listed(query), query))

    async def _context(self, request: Request, principal: Principal, wanted: GenerationFilter,
                       query: dict[str, str], **extra: Any) -> dict[str, Any]:
        async with request.app.state.pool.connection() as db:
            page = await find_generations(request, db, wanted, limit=50, cursor=query.get("cursor") or None)
            detail = None
            if query.get("generation"):
                found = await find_generations(request, db, GenerationFilter(generation_id=query["generation"]),
                                               limit=1, cursor=None)
                detail = msgspec.to_builtins(found.generations[0]) if found.generations else None
            progress = None
            if _AUDIT_ID.fullmatch(query.get("retry", "")):
                progress = msgspec.to_builtins(await find_retry_progress(db, int(query["retry"])))
            audit = await list_actions(db, limit=20)
        state = await pause_state(request)
        filters = {k: query.get(k, "") for k in FILTER_FIELDS}
        return {"signed_in": True, "base": CONSOLE_PATH, "actor": principal.user_id,
                "filters": filters, "generations": msgspec.to_builtins(page.generations),
                "next_cursor": page.nextCursor, "detail": detail, "progress": progress, "audit": audit,
                "pause": msgspec.to_builtins(state), "new_key": f"console-{uuid.uuid4().hex}", **extra}

    @post("/sign-in", status_code=303)
    async def sign_in(self, request: Request, data: Form) -> Response[Any]:
        _same_origin(request)
        token = (data.get("token") or "").strip()
        try:
            principal = decode_token(request.app.state.settings.jwt_secret, token)
        except NotAuthorizedException as exc:
            return Redirect(f"{CONSOLE_PATH}/?error={quote(str(exc.detail))}")
        if not principal.is_admin:
            return Redirect(f"{CONSOLE_PATH}/?error={quote('the console needs a token with the ADMIN role')}")
        return Redirect(f"{CONSOLE_PATH}/", cookies=[Cookie(key=COOKIE, value=token, path=CONSOLE_PATH,
                                                            httponly=True, samesite="strict")])

    @post("/sign-out", status_code=303)
    async def sign_out(self, request: Request) -> Response[Any]:
        _same_origin(request)
        return Redirect(f"{CONSOLE_PATH}/", cookies=[Cookie(key=COOKIE, value="", path=CONSOLE_PATH, max_age=0,
                                                            httponly=True, samesite="strict")])

    @post("/retries", status_code=200)
    async def retry(self, request: Request, data: Form) -> Response[Any]:
        principal = self._require(request)
        generation_id = data.get("generationId") or None
        body = None if generation_id else _filter_body(data)
        wanted = RetryRequest(charge=data.get("charge") == "true", dryRun=data.get("dryRun") == "true",
                              generationId=generation_id, filter=body)
        async with request.app.state.pool.connection() as db:
            answer = await run_retry(request, db, principal.user_id, wanted, data.get("idempotencyKey") or None)
        if not answer.dryRun:
            return Redirect(f"{CONSOLE_PATH}/?retry={answer.audit.id}")
        query = {k: data.get(k, "") for k in FILTER_FIELDS}
        context = await self._context(request, principal, _listed(query), {**query, "generation": generation_id or ""},
                                      dry_run=msgspec.to_builtins(answer), dry_run_generation=generation_id or "",
                                      dry_run_charge="true" if wanted.charge else "false")
        return Template(template_name="console.html", context=context)

    @post("/pause", status_code=303)
    async def pause(self, request: Request, data: Form) -> Response[Any]:
        principal = self._require(request)
        wanted = _form_as(PauseRequest, {"scope": data.get("scope", "intake"), "reason": data.get("reason", ""),
                                         "retryAfterSeconds": data.get("retryAfterSeconds") or 300})
        async with request.app.state.pool.connection() as db:
            await run_pause(request, db, principal.user_id, wanted)
        return Redirect(f"{CONSOLE_PATH}/")

    @post("/resume", status_code=303)
    async def resume(self, request: Request, data: Form) -> Response[Any]:
        principal = self._require(request)
        wanted = _form_as(ResumeRequest, {"scope": data.get("scope", "all")})
        async with request.app.state.pool.connection() as db:
            await run_resume(request, db, principal.user_id, wanted)
        return Redirect(f"{CONSOLE_PATH}/")

    @staticmethod
    def _require(request: Request) -> Principal:
        _same_origin(request)
        principal = _principal(request)
        if principal is None:
            raise HTTPException(status_code=HTTP_403_FORBIDDEN, detail="sign in to the console with an ADMIN token")
        return principal


def _listed(values: dict[str, str]) -> GenerationFilter:
    body = _filter_body(values)
    return GenerationFilter(status=body.status, error_type=body.errorType, user_id=body.userId,
                            created_from=body.createdFrom, created_to=body.createdTo,
                            finished_from=body.finishedFrom, finished_to=body.finishedTo,
                            has_failed_poses=body.hasFailedPoses)
