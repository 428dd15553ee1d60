"""Per-user limit on creating generations: Litestar's rate limiting, stored in Redis.

Only ``POST /generations`` is limited; the caller is the verified token's
subject (a forged token cannot spend another user's allowance), or the client
address when the token does not verify (the request then fails with 401 anyway).
Every create carries the draft RateLimit headers; ``Retry-After`` only on the
429 (on a 202 clients would read it as "wait before polling"). A create refused
before it was processed (400, 406, 413, 415, 422) gives its place back.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from litestar import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import HTTPException, NotAuthorizedException, TooManyRequestsException
from litestar.middleware.rate_limit import (
    DURATION_VALUES,
    CacheObject,
    RateLimitConfig,
    RateLimitMiddleware,
    get_remote_address,
)
from litestar.serialization import encode_json
from litestar.stores.base import Store
from litestar.stores.redis import RedisStore
from litestar.types import Message, Receive, Scope, Send
from redis.exceptions import RedisError

from app.api.auth import principal_from_token
from app.connections import async_redis_client

STORE_NAME = "rate_limit"
# Answers to requests refused before anything was done for them: they do not use up the allowance.
REFUSED_BEFORE_PROCESSING = frozenset({400, 406, 413, 415, 422})


class FailOpenRedisStore(RedisStore):
    """With Redis down the limiter lets requests through; the enqueue then answers 503 by itself."""

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        try:
            return await super().get(key, renew_for)
        except RedisError:
            return None

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        try:
            await super().set(key, value, expires_in)
        except RedisError:
            return None


def rate_limit_store(redis_url: str) -> FailOpenRedisStore:
    client = async_redis_client(redis_url)
    return FailOpenRedisStore(client, namespace="posegen-rate-limit")


class CreateRateLimitMiddleware(RateLimitMiddleware):
    """Litestar's limiter with Retry-After on the 429 alone, and refused requests not counted."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["litestar_app"]
        request: Request[Any, Any, Any] = app.request_class(scope)
        if not await self.should_check_request(request=request):
            await self.app(scope, receive, send)
            return
        store = self.config.get_store_from_app(app)
        key = self.cache_key_from_request(request)
        async with self._lock:
            cache_object = await self.retrieve_cached_history(key, store)
            if len(cache_object.history) >= self.max_requests:
                headers = self.create_response_headers(cache_object)
                reset = headers[self.config.rate_limit_reset_header_key]
                headers["Retry-After"] = reset
                raise TooManyRequestsException(
                    detail=f"Rate limit exceeded: at most {self.max_requests} creates per minute; retry in {reset} s",
                    headers=headers,
                )
            await self.set_cached_history(key=key, cache_object=cache_object, store=store)
        stamp = cache_object.history[0]
        # What a refused request's answer shows: the allowance with its place already given back.
        given_back = CacheObject(history=cache_object.history[1:], reset=cache_object.reset)
        refused = False

        async def send_with_headers(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start":
                refused = message["status"] in REFUSED_BEFORE_PROCESSING
                headers = MutableScopeHeaders(message)
                for name, value in self.create_response_headers(given_back if refused else cache_object).items():
                    headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except HTTPException as exc:
            # Refused by an inner middleware (content negotiation): answered further out, past our send.
            if exc.status_code in REFUSED_BEFORE_PROCESSING:
                refused = True
                exc.headers = {**self.create_response_headers(given_back), **(exc.headers or {})}
            raise
        finally:
            if refused:
                await self._give_back(key, stamp, store)

    async def _give_back(self, key: str, stamp: int, store: Store) -> None:
        async with self._lock:
            cache_object = await self.retrieve_cached_history(key, store)
            if stamp in cache_object.history:
                cache_object.history.remove(stamp)
                await store.set(key, encode_json(cache_object), expires_in=DURATION_VALUES[self.unit])


def _caller(request: Request[Any, Any, Any]) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        try:
            return "user:" + principal_from_token(request, token.strip()).user_id
        except NotAuthorizedException:
            pass
    return "address:" + get_remote_address(request)


def _is_generation_create(request: Request[Any, Any, Any]) -> bool:
    return request.method == "POST" and str(request.scope.get("path_template", "")).endswith("/generations")


def generation_rate_limit(per_minute: int) -> RateLimitConfig:
    return RateLimitConfig(
        rate_limit=("minute", per_minute),
        identifier_for_request=_caller,
        check_throttle_handler=_is_generation_create,
        middleware_class=CreateRateLimitMiddleware,
        store=STORE_NAME,
    )
