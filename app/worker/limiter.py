"""A cap on in-flight provider calls shared by every worker process, held in Redis.

Holders live in a sorted set scored by their expiry (Redis server time), so a
slot held by a process that died frees itself when its lease runs out.
"""

from __future__ import annotations

import asyncio
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

PROVIDER_SLOTS_KEY = "posegen:provider-slots"


class ProviderSlots:
    def __init__(self, redis: Redis, limit: int, lease_seconds: float, key: str = PROVIDER_SLOTS_KEY) -> None:
        self._redis = redis
        self._limit = limit
        self._lease_ms = int(lease_seconds * 1000)
        self._key = key
        self._acquire = redis.register_script(_ACQUIRE)

    async def acquire(self) -> str:
        """Wait for a slot. A Redis outage is waited out too (the pose's own deadline bounds the wait):
        the pose did nothing wrong, so it should not fail for it."""
        token = secrets.token_hex(8)
        delay = 0.005
        while True:
            try:
                if await self._acquire(keys=[self._key], args=[self._limit, token, self._lease_ms]):
                    return token
            except (RedisConnectionError, RedisTimeoutError):
                await asyncio.sleep(0.5)
                continue
            # Polling with jitter: slot turnover is seconds (a provider call), so a few ms of lag is noise.
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.05)

    async def release(self, token: str) -> None:
        try:
            await self._redis.zrem(self._key, token)
        except (RedisConnectionError, RedisTimeoutError):
            pass  # the slot's lease frees it when Redis is back

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        token = await self.acquire()
        try:
            yield
        finally:
            await self.release(token)
