"""Per-caller limits at the HTTP edge: creates, refused creates, reads, and the error events a caller can cause.

The caller is the verified token's subject (a forged token cannot spend another user's allowance), or the
client address when the token does not verify (the request then fails with 401 anyway). The allowances
live in Redis (:mod:`app.api.allowances`), so they hold across API processes and replicas; while Redis
cannot be read, requests pass (fail open: the create's enqueue then answers 503 by itself), and for a few
seconds after a failed call none is tried (:class:`~app.api.allowances.RedisOutage`).

- ``POST /generations``: at most ``POSEGEN_RATE_LIMIT_PER_MINUTE`` in any 60 s. Every create carries the
  draft RateLimit headers; ``Retry-After`` only on the 429 (on a 202 clients would read it as "wait before
  polling"). A create refused before it was processed (400, 406, 413, 415, 422) gives its place back and
  counts as a refused create instead: after ``POSEGEN_INVALID_CREATE_LIMIT_PER_MINUTE`` of those in 60 s,
  creates answer 429 until the oldest is a minute old. A refusal the handler marks free
  (:func:`refusal_is_free`: the 503 of a planned pause) gives its place back and counts as nothing.
- ``GET`` (and ``HEAD``) with an ``Authorization`` header: at most ``POSEGEN_READ_LIMIT_PER_MINUTE`` per 60 s window,
  then 429 with ``Retry-After``. A process takes reads from Redis in leases (:mod:`app.api.read_leases`), so
  most reads cost no Redis call.
- Every request with credentials (and every create): at most ``POSEGEN_CALLER_CONCURRENCY`` of one caller run
  at once in a process, the others wait their turn (:mod:`app.api.caller_concurrency`), so a caller that
  ignores 429 cannot crowd the others out of the event loop.
- Error events the API writes for a caller (``VALIDATION_ERROR``, ``CREDIT_ERROR``): at most
  ``POSEGEN_CALLER_ERROR_EVENTS_PER_MINUTE`` per window; the rest are counted in
  ``pose_api_error_events_unrecorded_total``, not written.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, NotAuthorizedException, TooManyRequestsException
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.api.allowances import WINDOW_SECONDS, CountedAllowance, CreateAllowance, RedisOutage
from app.api.auth import decode_token
from app.api.caller_concurrency import CallerConcurrency
from app.api.openapi import error_responses
from app.api.read_leases import ReadLeases
from app.errors import ErrorType
from app.metric_catalogue import counter
from app.settings import Settings

# Answers to creates refused before anything was done for them: they give their place back.
REFUSED_BEFORE_PROCESSING = frozenset({400, 406, 413, 415, 422})
_FREE_REFUSAL = "posegen.free_refusal"

UNRECORDED_ERROR_EVENTS = counter("pose_api_error_events_unrecorded_total")
API_RECORDED_ERROR_TYPES = (ErrorType.VALIDATION_ERROR, ErrorType.CREDIT_ERROR)
for _error_type in API_RECORDED_ERROR_TYPES:  # at 0 from start-up, so rate() sees the first one
    UNRECORDED_ERROR_EVENTS.labels(_error_type.value)


def refusal_is_free(request: Request[Any, Any, Any]) -> None:
    """Mark the create being answered as refused at no cost to its caller (a planned pause): its place in
    the create allowance is given back and it does not count as a refused create."""
    request.scope[_FREE_REFUSAL] = True  # type: ignore[literal-required]


def _policy_headers(limit: int, remaining: int, reset_seconds: int) -> dict[str, str]:
    """The draft IETF RateLimit headers (draft-ietf-httpapi-ratelimit-headers), as Litestar's limiter sent them."""
    return {"RateLimit-Policy": f"{limit}; w={WINDOW_SECONDS}", "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(max(0, remaining)), "RateLimit-Reset": str(reset_seconds)}


class CallerLimits:
    """The per-caller allowances of one API process, all in the one Redis (see the module docstring)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._jwt_secret = settings.jwt_secret
        self._token_max_ttl = settings.token_max_ttl_seconds
        outage = RedisOutage()
        self.creates = (CreateAllowance(redis, outage, limit=settings.rate_limit_per_minute,
                                        refused_limit=settings.invalid_create_limit_per_minute)
                        if settings.rate_limit_per_minute or settings.invalid_create_limit_per_minute else None)
        self.reads = (CountedAllowance(redis, outage, "reads", limit=settings.read_limit_per_minute)
                      if settings.read_limit_per_minute else None)
        self._read_leases = ReadLeases(self.reads) if self.reads is not None else None
        self._error_events = CountedAllowance(redis, outage, "error-events",
                                              limit=settings.caller_error_events_per_minute)
        self.concurrency = CallerConcurrency(settings.caller_concurrency) if settings.caller_concurrency else None

    def caller(self, scope: Scope) -> str:
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            try:
                return "user:" + decode_token(self._jwt_secret, token.strip(), self._token_max_ttl).user_id
            except NotAuthorizedException:
                pass
        client = scope.get("client")
        return "address:" + (client[0] if client else "unknown")

    async def admit_read(self, caller: str) -> int:
        """0 when the caller may read now, else the seconds until it may (see :mod:`app.api.read_leases`)."""
        assert self._read_leases is not None
        return await self._read_leases.admit(caller)

    async def may_record_error_event(self, user_id: str, error_type: ErrorType) -> bool:
        """Whether an error event of ``user_id``'s request may be written; if not, it is counted in
        ``pose_api_error_events_unrecorded_total``. Fails closed: with Redis unreadable nothing is written."""
        try:
            grant = (await self._error_events.take({f"user:{user_id}": 1}))[f"user:{user_id}"]
            if grant.granted:
                return True
        except RedisError:
            pass
        UNRECORDED_ERROR_EVENTS.labels(error_type.value).inc()
        return False

    async def aclose(self) -> None:
        if self._read_leases is not None:
            await self._read_leases.aclose()
        await self._redis.aclose()


def document_read_limit(app: Litestar) -> None:
    """Add the read limit's 429 to the OpenAPI answers of every read that takes a token (documents a 401)."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            responses = getattr(handler, "responses", None) or {}
            if "GET" in getattr(handler, "http_methods", ()) and 401 in responses and 429 not in responses:
                handler.responses = {**responses, 429: error_responses(429)[429]}


def _is_create(scope: Scope) -> bool:
    return _method(scope) == "POST" and str(scope.get("path_template", "")).endswith("/generations")


def _has_credentials(scope: Scope) -> bool:
    return any(k == b"authorization" for k, _ in scope["headers"])


class CallerLimitMiddleware:
    """Litestar middleware (after routing: it knows the route) applying :class:`CallerLimits`."""

    def __init__(self, app: ASGIApp, limits: CallerLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.limits
        create = scope["type"] == "http" and limits.creates is not None and _is_create(scope)
        if not create and (scope["type"] != "http" or not _has_credentials(scope)):
            await self.app(scope, receive, send)
            return
        caller = limits.caller(scope)
        if limits.concurrency is not None:
            await limits.concurrency.acquire(caller)
        try:
            if create:
                await self._limit_create(caller, scope, receive, send)
                return
            if limits.reads is not None and _method(scope) == "GET":
                await self._limit_read(caller)
            await self.app(scope, receive, send)
        finally:
            if limits.concurrency is not None:
                limits.concurrency.release(caller)

    async def _limit_read(self, caller: str) -> None:
        assert self.limits.reads is not None
        wait = await self.limits.admit_read(caller)
        if not wait:
            return
        limit = self.limits.reads.limit
        raise TooManyRequestsException(
            detail=f"Rate limit exceeded: at most {limit} reads per minute; retry in {wait} s",
            headers={**_policy_headers(limit, 0, wait), "Retry-After": str(wait)},
        )

    async def _limit_create(self, caller: str, scope: Scope, receive: Receive, send: Send) -> None:
        allowance = self.limits.creates
        assert allowance is not None
        try:
            take = await allowance.take(caller)
        except RedisError:
            await self.app(scope, receive, send)  # fail open
            return
        limit = allowance.limit
        if not take.taken:
            wait = take.reset_seconds
            detail = (f"Rate limit exceeded: at most {limit} creates per minute; retry in {wait} s"
                      if take.refused_by == "creates" else
                      f"Rate limit exceeded: at most {allowance.refused_limit} invalid creates per minute; "
                      f"retry in {wait} s")
            headers = _policy_headers(limit, 0, wait) if limit else {}
            raise TooManyRequestsException(detail=detail, headers={**headers, "Retry-After": str(wait)})
        # What the answer shows: the allowance after this create, or with its place given back.
        kept = _policy_headers(limit, limit - take.used, take.reset_seconds) if limit else {}
        given_back = _policy_headers(limit, limit - take.used + 1, take.reset_seconds) if limit else {}
        refused = False

        async def send_with_headers(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start":
                refused = message["status"] in REFUSED_BEFORE_PROCESSING or bool(scope.get(_FREE_REFUSAL))
                headers = MutableScopeHeaders(message)
                for name, value in (given_back if refused else kept).items():
                    headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except HTTPException as exc:
            # Refused by an inner middleware (content negotiation): answered further out, past our send.
            if exc.status_code in REFUSED_BEFORE_PROCESSING:
                refused = True
                exc.headers = {**given_back, **(exc.headers or {})}
            raise
        finally:
            if refused:
                try:
                    await allowance.give_back(caller, take.member, refused=not scope.get(_FREE_REFUSAL))
                except RedisError:
                    pass


def _method(scope: Scope) -> str:
    """The request method of an HTTP scope; a WebSocket scope has none (its handshake is a GET)."""
    return scope["method"] if scope["type"] == ScopeType.HTTP else "GET"
