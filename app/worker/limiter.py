"""A cap on in-flight provider calls shared by every worker process, held in Redis.

Holders live in a sorted set scored by their expiry (Redis server time). A holder
renews its short lease while it works, however long the provider call takes, so a
slot held by a process that died (a SIGKILLed work-horse) frees itself within one
lease instead of after the longest possible provider call.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

_ACQUIRE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[2])
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
    return 1
end
return 0
"""

_RENEW = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
    return 1
end
return 0
"""

PROVIDER_SLOTS_KEY = "posegen:provider-slots"
# Long enough to ride out a busy event loop, short enough that a dead holder's slot is back in seconds.
SLOT_LEASE_SECONDS = 15.0


def _honour_cancellation() -> None:
    """Raise CancelledError when this task is being cancelled. redis-py can turn a cancellation that
    lands mid-command into a ConnectionError (and retry the command), which a caller waiting out
    Redis outages would otherwise swallow."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ProviderSlots:
    def __init__(
        self, redis: Redis, limit: int, lease_seconds: float = SLOT_LEASE_SECONDS, key: str = PROVIDER_SLOTS_KEY
    ) -> None:
        self._redis = redis
        self._limit = limit
        self._lease_ms = int(lease_seconds * 1000)
        self._key = key
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)

    async def acquire(self) -> str:
        """Wait for a slot. A Redis outage is waited out too (the pose's own deadline bounds the wait):
        the pose did nothing wrong, so it should not fail for it."""
        token = secrets.token_hex(8)
        delay = 0.005
        while True:
            try:
                if await self._acquire(keys=[self._key], args=[self._limit, token, self._lease_ms]):
                    return token
                # Polling with jitter: slot turnover is seconds (a provider call), so a few ms of lag is noise.
                pause = delay * random.uniform(0.5, 1.5)
                delay = min(delay * 2, 0.05)
            except (RedisConnectionError, RedisTimeoutError):
                pause = 0.5
            _honour_cancellation()  # or a timed-out pose would go on waiting for a slot forever
            await asyncio.sleep(pause)

    async def release(self, token: str) -> None:
        try:
            await self._redis.zrem(self._key, token)
        except (RedisConnectionError, RedisTimeoutError):
            pass  # the slot's lease frees it when Redis is back

    async def keep_alive(self, token: str) -> None:
        """Renew ``token``'s lease every third of a lease until cancelled. Renewing a slot that is
        already gone (released, or lapsed while Redis was away) is a no-op: it is never re-taken."""
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
                await self._renew(keys=[self._key], args=[token, self._lease_ms])
            _honour_cancellation()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        token = await self.acquire()
        try:
            _honour_cancellation()  # cancelled while the winning call was in flight
        except asyncio.CancelledError:
            await self.release(token)
            raise
        renewer = asyncio.create_task(self.keep_alive(token))
        try:
            yield
        finally:
            renewer.cancel()
            await self.release(token)
