"""Per-user limit on creating generations: Litestar's rate limiting, stored in Redis, with Retry-After.

Only ``POST /generations`` is limited; the caller is the verified token's
subject (a forged token cannot spend another user's allowance), or the client
address when the token does not verify (the request then fails with 401 anyway).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from litestar import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import NotAuthorizedException
from litestar.middleware.rate_limit import CacheObject, RateLimitConfig, RateLimitMiddleware, get_remote_address
from litestar.stores.redis import RedisStore
from litestar.types import Message, Send
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from app.api.auth import decode_token
from app.worker.queue import redis_options

STORE_NAME = "rate_limit"


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
    client = AsyncRedis.from_url(redis_url, **redis_options())
    return FailOpenRedisStore(client, namespace="posegen-rate-limit")


class RetryAfterRateLimitMiddleware(RateLimitMiddleware):
    def create_response_headers(self, cache_object: CacheObject) -> dict[str, str]:
        headers = super().create_response_headers(cache_object)
        headers["Retry-After"] = headers[self.config.rate_limit_reset_header_key]
        return headers

    def create_send_wrapper(self, send: Send, cache_object: CacheObject) -> Send:
        """Rate-limit headers on every create, but a Retry-After the handler set itself (a paused intake's
        503) is the one the client gets."""
        own: dict[str, str] = {}

        async def restore(message: Message) -> None:
            if message["type"] == "http.response.start" and "retry-after" in own:
                MutableScopeHeaders(message)["Retry-After"] = own["retry-after"]
            await send(message)

        wrapped = super().create_send_wrapper(restore, cache_object)

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                value = MutableScopeHeaders(message).get("retry-after")
                if value is not None:
                    own["retry-after"] = value
            await wrapped(message)

        return capture


def _caller(request: Request[Any, Any, Any]) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        try:
            return "user:" + decode_token(request.app.state.settings.jwt_secret, token.strip()).user_id
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
        middleware_class=RetryAfterRateLimitMiddleware,
        store=STORE_NAME,
    )
