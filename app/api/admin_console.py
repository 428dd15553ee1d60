"""The operators' console: one server-rendered page (Jinja, no front-end build, no assets from elsewhere).

Failed generations with filters, a generation's attempts, a retry's dry run then execution with its
progress, pause/resume, and the audit log. Every action calls the same functions as the JSON endpoints
(:mod:`app.api.admin_operations`), so it can do nothing they do not.

Sign-in verifies an ADMIN token and starts a server-side session (:mod:`app.api.console_sessions`); the cookie
holds only the session's random id (HttpOnly, Secure, SameSite=Strict, scoped to the console). Every post (sign-in,
sign-out, retries, pause, resume) must come from the console itself, checked twice: its ``Origin`` is exactly the
console's own (a missing or ``null`` Origin, which a redirect or a sandboxed frame produces, is refused; the
Referer is not a fallback: browsers send Origin with every POST, and one without is not a browser's form), and it
carries the session's CSRF token (for sign-in, the pre-session's), compared in constant time. SameSite alone is not
enough: a page on the same site (another port of the host, a sibling subdomain) gets the cookie sent along.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ServiceUnavailableException,
)
from litestar.params import Body
from litestar.response import Redirect, Template
from redis.exceptions import RedisError

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
from app.api.auth import verify_token
from app.api.console_sessions import ConsoleSession, ConsoleSessions, new_random_id
from app.api.error_responses import RETRY_AFTER_UNAVAILABLE
from app.api.state import api_state
from app.domain.audit import list_actions
from app.domain.generation_search import GenerationFilter
from app.observability.logging import get_logger

CONSOLE_PATH = f"{API_PREFIX}/admin/console"
SESSION_COOKIE = "posegen_console_session"
SIGN_IN_COOKIE = "posegen_console_sign_in"
CSRF_FIELD = "csrf"
FILTER_FIELDS = ("status", "errorType", "userId", "createdFrom", "createdTo", "finishedFrom", "finishedTo",
                 "hasFailedPoses")
Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
log = get_logger("API")
T = TypeVar("T")


def _cookie(key: str, value: str, *, expire: bool = False) -> Cookie:
    """A console cookie: only the console's paths get it, no script reads it, it travels only over TLS (browsers
    count http://127.0.0.1 and localhost as secure too), and no other site's request carries it. No Max-Age: it
    ends with the browser; the session's own timeouts are kept on the server."""
    return Cookie(key=key, value=value, path=CONSOLE_PATH, httponly=True, secure=True, samesite="strict",
                  max_age=0 if expire else None)


def _to_console(query: str = "", cookies: list[Cookie] | None = None) -> Response[Any]:
    """After a form's post, the console page (303: the browser GETs it)."""
    return Redirect(f"{CONSOLE_PATH}/{query}", status_code=303, cookies=cookies or [])


def _console_origin(request: Request) -> str | None:
    """The console's own origin as a browser serializes it: ``scheme://host[:port]`` of this request (its Host
    header), the scheme's default port left out."""
    scheme = request.scope.get("scheme", "http")
    host = next((value.decode("latin-1") for name, value in request.scope["headers"] if name == b"host"), "")
    if not host:
        return None
    host = host.lower()
    default_port = _DEFAULT_PORTS.get(scheme, "")
    if default_port and host.endswith(default_port):
        host = host[: -len(default_port)]
    return f"{scheme}://{host}"


def _refuse(request: Request, reason: str, detail: str) -> PermissionDeniedException:
    # OWASP: a refused token is logged as a possible CSRF attack in progress.
    log.warning("Console request refused", reason=reason, path=request.scope["path"],
                origin=request.headers.get("origin"))
    return PermissionDeniedException(detail)


def _check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is None or origin == "null" or origin != _console_origin(request):
        raise _refuse(request, "origin", "console forms post only from the console itself (exact Origin required)")


def _check_csrf(request: Request, session: ConsoleSession, data: dict[str, str]) -> None:
    if not session.accepts(data.get(CSRF_FIELD)):
        raise _refuse(request, "csrf", "the form's CSRF token is not this console session's: reload the console")


def _sessions(request: Request) -> ConsoleSessions:
    return api_state(request).console_sessions


async def _session(request: Request) -> ConsoleSession | None:
    return await _in_redis(_sessions(request).find, request.cookies.get(SESSION_COOKIE))


async def _in_redis(call: Callable[..., T], *args: Any) -> T:
    """A session store call, off the event loop; Redis down is a 503 (no session can be checked: fail closed)."""
    try:
        return await asyncio.to_thread(call, *args)
    except RedisError:
        raise ServiceUnavailableException("console sessions are unavailable (Redis); retry shortly",
                                          headers={"Retry-After": RETRY_AFTER_UNAVAILABLE}) from None


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
        session = await _session(request)
        if session is None:
            return self._sign_in_page(request, request.query_params.get("error"))
        session = await _in_redis(_sessions(request).touch, session)
        query = dict(request.query_params)
        if "hasFailedPoses" not in query:
            # What operators come for: every generation with failed poses to retry, the completed ones with
            # some poses failed as well as the failed ones (the form sends the field, "" for any).
            query["hasFailedPoses"] = "true"
        return Template(template_name="console.html",
                        context=await self._context(request, session, _listed(query), query))

    @staticmethod
    def _sign_in_page(request: Request, error: str | None) -> Response[Any]:
        """The sign-in form, with the token of the browser's pre-session (a new one when it has none)."""
        forms = api_state(request).sign_in_forms
        pre_session = request.cookies.get(SIGN_IN_COOKIE)
        cookies = []
        if not forms.is_pre_session(pre_session):
            pre_session = new_random_id()
            cookies.append(_cookie(SIGN_IN_COOKIE, pre_session))
        if request.cookies.get(SESSION_COOKIE):
            # The session it names has ended (idle, too old, its token expired, signed out): forget it.
            cookies.append(_cookie(SESSION_COOKIE, "", expire=True))
            error = error or "Your console session has ended; sign in again."
        context = {"signed_in": False, "base": CONSOLE_PATH, "error": error,
                   "csrf": forms.token_for(pre_session or "")}
        return Template(template_name="console.html", context=context, cookies=cookies)

    async def _context(self, request: Request, session: ConsoleSession, wanted: GenerationFilter,
                       query: dict[str, str], **extra: Any) -> dict[str, Any]:
        async with api_state(request).pool.connection() as db:
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
        return {"signed_in": True, "base": CONSOLE_PATH, "actor": session.operator, "csrf": session.csrf_token,
                "filters": filters, "generations": msgspec.to_builtins(page.generations),
                "next_cursor": page.nextCursor, "detail": detail, "progress": progress, "audit": audit,
                "pause": msgspec.to_builtins(state), "new_key": f"console-{uuid.uuid4().hex}", **extra}

    @post("/sign-in", status_code=303)
    async def sign_in(self, request: Request, data: Form) -> Response[Any]:
        _check_origin(request)
        forms = api_state(request).sign_in_forms
        if not forms.accepts(request.cookies.get(SIGN_IN_COOKIE), data.get(CSRF_FIELD)):
            raise _refuse(request, "sign-in csrf", "this sign-in form is not the console's own (or is stale): "
                                                   "reload the console and sign in again")
        settings = api_state(request).settings
        try:
            verified = verify_token(settings.jwt_secret, (data.get("token") or "").strip(),
                                    settings.token_max_ttl_seconds)
        except NotAuthorizedException as exc:
            return _to_console(f"?error={quote(str(exc.detail))}")
        if not verified.principal.is_admin:
            return _to_console(f"?error={quote('the console needs a token with the ADMIN role')}")
        sessions = _sessions(request)
        carried = request.cookies.get(SESSION_COOKIE)
        if carried:
            # A new id at every sign-in: a session id planted in this browser beforehand (session fixation), or
            # an earlier session of its own, never becomes the signed-in one.
            await _in_redis(sessions.end, carried)
        session = await _in_redis(sessions.start, verified.principal.user_id, verified.expires_at)
        return _to_console(cookies=[_cookie(SESSION_COOKIE, session.session_id),
                                    _cookie(SIGN_IN_COOKIE, "", expire=True)])

    @post("/sign-out", status_code=303)
    async def sign_out(self, request: Request, data: Form) -> Response[Any]:
        _check_origin(request)
        session = await _session(request)
        if session is not None:  # without one there is nothing to end: only the cookie is forgotten
            _check_csrf(request, session, data)
            await _in_redis(_sessions(request).end, session.session_id)
        return _to_console(cookies=[_cookie(SESSION_COOKIE, "", expire=True)])

    @post("/retries", status_code=200)
    async def retry(self, request: Request, data: Form) -> Response[Any]:
        session = await self._require(request, data)
        generation_id = data.get("generationId") or None
        body = None if generation_id else _filter_body(data)
        wanted = RetryRequest(charge=data.get("charge") == "true", dryRun=data.get("dryRun") == "true",
                              generationId=generation_id, filter=body)
        async with api_state(request).pool.connection() as db:
            answer = await run_retry(request, db, session.operator, wanted, data.get("idempotencyKey") or None)
        if not answer.dryRun:
            return _to_console(f"?retry={answer.audit.id}")
        query = {k: data.get(k, "") for k in FILTER_FIELDS}
        context = await self._context(request, session, _listed(query), {**query, "generation": generation_id or ""},
                                      dry_run=msgspec.to_builtins(answer), dry_run_generation=generation_id or "",
                                      dry_run_charge="true" if wanted.charge else "false")
        return Template(template_name="console.html", context=context)

    @post("/pause", status_code=303)
    async def pause(self, request: Request, data: Form) -> Response[Any]:
        session = await self._require(request, data)
        wanted = _form_as(PauseRequest, {"scope": data.get("scope", "intake"), "reason": data.get("reason", ""),
                                         "retryAfterSeconds": data.get("retryAfterSeconds") or 300})
        async with api_state(request).pool.connection() as db:
            await run_pause(request, db, session.operator, wanted)
        return _to_console()

    @post("/resume", status_code=303)
    async def resume(self, request: Request, data: Form) -> Response[Any]:
        session = await self._require(request, data)
        wanted = _form_as(ResumeRequest, {"scope": data.get("scope", "all")})
        async with api_state(request).pool.connection() as db:
            await run_resume(request, db, session.operator, wanted)
        return _to_console()

    @staticmethod
    async def _require(request: Request, data: dict[str, str]) -> ConsoleSession:
        """The session of a state-changing post: its exact Origin, a live session, and that session's CSRF token;
        otherwise 403 and nothing happens. The session is used now (its idle timeout starts again)."""
        _check_origin(request)
        session = await _session(request)
        if session is None:
            raise HTTPException(status_code=403, detail="sign in to the console with an ADMIN token")
        _check_csrf(request, session, data)
        return await _in_redis(_sessions(request).touch, session)


def _listed(values: dict[str, str]) -> GenerationFilter:
    body = _filter_body(values)
    return GenerationFilter(status=body.status, error_type=body.errorType, user_id=body.userId,
                            created_from=body.createdFrom, created_to=body.createdTo,
                            finished_from=body.finishedFrom, finished_to=body.finishedTo,
                            has_failed_poses=body.hasFailedPoses)
