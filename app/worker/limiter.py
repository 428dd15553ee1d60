"""A cap on in-flight provider calls shared by every worker process, held in Redis.

Holders live in a sorted set scored by their expiry (Redis server time). A holder
renews its short lease while it works, however long the provider call takes, so a
slot held by a process that died (a SIGKILLed work-horse) frees itself within one
lease instead of after the longest possible provider call.

What on-call reads (USE of the one resource that limits us): slots in use and the cap, read from this
state at scrape time (:func:`read_slot_usage`, by the exporter), and the time each pose waited for a
slot (``pose_provider_slot_wait_seconds``, added to Redis as each wait ends).

Retries of failed poses (an operator's retry batch) share the same slots but may hold at most
``retry_limit`` of them at once: their holders are also in a second sorted set, and a retry takes a
slot only while both sets have room, so a batch of retries never starves new generations.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.observability.fleet_metrics import PROVIDER_SLOT_WAIT, add_observation

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

# KEYS: all slots, retry slots. ARGV: limit, token, lease ms, retry limit.
_ACQUIRE_FOR_RETRY = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) and redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[4]) then
    for _, key in ipairs(KEYS) do
        redis.call('ZADD', key, now_ms + tonumber(ARGV[3]), ARGV[2])
        redis.call('PEXPIRE', key, tonumber(ARGV[3]) * 2)
    end
    return 1
end
return 0
"""

# Renews the token in every key that still holds it.
_RENEW = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local renewed = 0
for _, key in ipairs(KEYS) do
    if redis.call('ZSCORE', key, ARGV[1]) then
        redis.call('ZADD', key, now_ms + tonumber(ARGV[2]), ARGV[1])
        redis.call('PEXPIRE', key, tonumber(ARGV[2]) * 2)
        renewed = 1
    end
end
return renewed
"""

# Holders whose lease has not lapsed, by Redis server time (a dead holder's entry lingers until then).
_IN_USE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return {redis.call('ZCOUNT', KEYS[1], '(' .. now_ms, '+inf'), redis.call('GET', KEYS[2])}
"""

PROVIDER_SLOTS_KEY = "posegen:provider-slots"
# The cap the most recently started worker runs with (POSEGEN_PROVIDER_CONCURRENCY), for the exporter.
PROVIDER_SLOTS_LIMIT_KEY = "posegen:provider-slots:limit"
# Long enough to ride out a busy event loop, short enough that a dead holder's slot is back in seconds.
SLOT_LEASE_SECONDS = 15.0


def _honour_cancellation() -> None:
    """Raise CancelledError when this task is being cancelled. redis-py can turn a cancellation that
    lands mid-command into a ConnectionError (and retry the command), which a caller waiting out
    Redis outages would otherwise swallow."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def retry_slot_limit(limit: int, share: float) -> int:
    """How many of ``limit`` slots retries may hold at once: ``share`` of them, at least one."""
    return max(1, int(limit * share))


class HeldSlot:
    """One provider slot held by a pose: :meth:`release` gives it back early (once the provider says the task
    is done, before the image is downloaded); the ``slot()`` block releases it otherwise. Idempotent."""

    def __init__(self, slots: ProviderSlots, token: str, renewer: asyncio.Task[None]) -> None:
        self._slots = slots
        self._token = token
        self._renewer = renewer
        self.released = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._renewer.cancel()
        await self._slots.release(self._token)


class ProviderSlots:
    def __init__(
        self, redis: Redis, limit: int, lease_seconds: float = SLOT_LEASE_SECONDS, key: str = PROVIDER_SLOTS_KEY,
        retry_limit: int | None = None,
    ) -> None:
        self._redis = redis
        self._limit = limit
        self._retry_limit = limit if retry_limit is None else retry_limit
        self._lease_ms = int(lease_seconds * 1000)
        self._key = key
        self._retry_key = f"{key}:retries"
        self._freed_key = f"{key}:freed"
        self._acquire = redis.register_script(_ACQUIRE)
        self._acquire_for_retry = redis.register_script(_ACQUIRE_FOR_RETRY)
        self._renew = redis.register_script(_RENEW)

    async def _try_acquire(self, token: str, retry: bool) -> bool:
        if retry:
            return bool(await self._acquire_for_retry(
                keys=[self._key, self._retry_key], args=[self._limit, token, self._lease_ms, self._retry_limit]))
        return bool(await self._acquire(keys=[self._key], args=[self._limit, token, self._lease_ms]))

    async def acquire(self, retry: bool = False) -> str:
        """Wait for a slot (``retry``: one a retried pose may take, within the retries' share). A Redis
        outage is waited out too (the pose's own deadline bounds the wait): the pose did nothing wrong,
        so it should not fail for it."""
        token = secrets.token_hex(8)
        delay = 0.005
        while True:
            try:
                if await self._try_acquire(token, retry):
                    return token
                # Wait for a release (each pushes a wake-up that one waiter pops, so a freed slot is taken
                # within a Redis round trip), or try again after a short, growing pause: a slot freed by a
                # lapsed lease, or a wake-up taken by a waiter that then lost the race, pushes nothing.
                await self._redis.blpop([self._freed_key], timeout=max(0.005, delay * random.uniform(0.5, 1.5)))
                delay = min(delay * 2, 0.05)
            except (RedisConnectionError, RedisTimeoutError):
                _honour_cancellation()
                await asyncio.sleep(0.5)
            _honour_cancellation()  # or a timed-out pose would go on waiting for a slot forever

    async def _record_wait(self, seconds: float) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                add_observation(pipe, PROVIDER_SLOT_WAIT, seconds)
                await pipe.execute()
        except RedisError:
            pass  # the figure is lost, the pose goes on

    async def release(self, token: str) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                # A pipeline's commands are queued, not awaited: only execute() goes to Redis.
                pipe.zrem(self._key, token)
                pipe.zrem(self._retry_key, token)
                # Wake one waiter; no more wake-ups are kept than there are slots, and none for long.
                pipe.rpush(self._freed_key, 1)
                pipe.ltrim(self._freed_key, -self._limit, -1)
                pipe.pexpire(self._freed_key, self._lease_ms)
                await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError):
            pass  # the slot's lease frees it when Redis is back

    async def keep_alive(self, token: str) -> None:
        """Renew ``token``'s lease every third of a lease until cancelled. Renewing a slot that is
        already gone (released, or lapsed while Redis was away) is a no-op: it is never re-taken."""
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
                await self._renew(keys=[self._key, self._retry_key], args=[token, self._lease_ms])
            _honour_cancellation()

    @asynccontextmanager
    async def slot(self, retry: bool = False) -> AsyncIterator[HeldSlot]:
        """Hold one slot for the block (waiting for one first); the block may release it earlier."""
        waiting_since = time.perf_counter()
        token = await self.acquire(retry)
        await self._record_wait(time.perf_counter() - waiting_since)
        try:
            _honour_cancellation()  # cancelled while the winning call was in flight
        except asyncio.CancelledError:
            await self.release(token)
            raise
        held = HeldSlot(self, token, asyncio.create_task(self.keep_alive(token)))
        try:
            yield held
        finally:
            await held.release()


def advertise_limit(redis: SyncRedis, limit: int) -> None:
    """Record the cap this worker runs with, so the exporter shows it beside the slots in use."""
    redis.set(PROVIDER_SLOTS_LIMIT_KEY, limit)


def read_slot_usage(redis: SyncRedis) -> tuple[int, int | None]:
    """``(slots held under a live lease, advertised cap or None)``, in one round trip, by Redis time."""
    in_use, limit = redis.eval(_IN_USE, 2, PROVIDER_SLOTS_KEY, PROVIDER_SLOTS_LIMIT_KEY)
    return int(in_use), int(limit) if limit is not None else None
