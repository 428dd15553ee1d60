"""Per-caller allowances kept in Redis, so one limit holds across every API process and replica.

Each decision is one Lua script: read, decide and write in one atomic step and one round trip (a read
followed by a write from two processes would let both through). Time is Redis's own clock (``TIME``),
so API hosts whose clocks disagree still share one window. Two kinds:

- :class:`CreateAllowance`, a *sliding window log* (a sorted set of the accepted creates of the last
  60 s): at most ``limit`` creates in any 60 s, never more; a create refused before it was processed is
  removed again (its place given back) and, unless the refusal was free (a planned pause), logged as a
  refused create, which has an allowance of its own.
- :class:`CountedAllowance`, a *fixed window* counter that starts with the caller's first counted event
  and lasts 60 s: at most ``limit`` per window (a caller can fit up to twice that into a span that
  straddles two windows). One integer per caller, for frequent and generous allowances (reads) and for
  the error events the API writes; one script call serves a batch of callers.

Every key is built here (:func:`caller_key`); all of a caller's keys share a Redis Cluster hash tag.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

WINDOW_SECONDS = 60
_WINDOW_MS = WINDOW_SECONDS * 1000

# KEYS[1] the caller's accepted creates, KEYS[2] their refused creates (sorted sets: member -> ms).
# ARGV: create limit (0: none), refused-create limit (0: none), window ms, the new member.
# Returns {taken (1/0), creates counted (with this one when taken), ms until the oldest leaves the
# window, which limit refused it: "" (none), "creates" or "refused"}.
_TAKE_CREATE = """
local now_s = redis.call('TIME')
local now = tonumber(now_s[1]) * 1000 + math.floor(tonumber(now_s[2]) / 1000)
local create_limit, refused_limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function count(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  return redis.call('ZCARD', key)
end
local function frees_in(key)
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if oldest[2] then return tonumber(oldest[2]) + window - now end
  return window
end
local used = count(KEYS[1])
if refused_limit > 0 and count(KEYS[2]) >= refused_limit then
  return {0, used, frees_in(KEYS[2]), 'refused'}
end
if create_limit > 0 and used >= create_limit then
  return {0, used, frees_in(KEYS[1]), 'creates'}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return {1, used + 1, frees_in(KEYS[1]), ''}
"""

# KEYS as above; ARGV: the member to give back, "1" to log it as a refused create, window ms.
_GIVE_BACK_CREATE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  local now_s = redis.call('TIME')
  local now = tonumber(now_s[1]) * 1000 + math.floor(tonumber(now_s[2]) / 1000)
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]))
end
return 1
"""

# KEYS: one counter per caller. ARGV: limit, window ms, then how many each caller asks for, in KEYS order.
# Returns, per caller, {granted (0..asked), counted in the window after this, ms until the window ends}.
_TAKE_COUNTED = """
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  local used = tonumber(redis.call('GET', key) or '0')
  local granted = math.max(0, math.min(tonumber(ARGV[i + 2]), limit - used))
  if granted > 0 then
    used = redis.call('INCRBY', key, granted)
    if used == granted then redis.call('PEXPIRE', key, window) end
  end
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then ttl = window end
  out[#out + 1] = granted
  out[#out + 1] = used
  out[#out + 1] = ttl
end
return out
"""


class RedisOutage:
    """Shared by a process's allowances: after a Redis call failed, none is tried for :attr:`seconds`, so while
    Redis is down or silent each request is decided at once (as when the call fails) instead of waiting for a
    timeout first."""

    def __init__(self, seconds: float = 5.0) -> None:
        self.seconds = seconds
        self._until = float("-inf")

    async def call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """``script``'s answer; raises RedisError when it fails, or at once during an outage."""
        if time.monotonic() < self._until:
            raise RedisConnectionError("Redis failed less than a few seconds ago; not asked")
        try:
            return await script(keys=keys, args=args)
        except RedisError:
            self._until = time.monotonic() + self.seconds
            raise


def caller_key(caller: str, allowance: str) -> str:
    """The Redis key of one caller's ``allowance`` (``creates``, ``refused-creates``, ``reads``,
    ``error-events``)."""
    return f"posegen:limits:{{{caller}}}:{allowance}"


def _seconds(ms: int) -> int:
    """Milliseconds as whole seconds, rounded up, at least 1: what Retry-After and RateLimit-Reset say."""
    return max(1, math.ceil(ms / 1000))


@dataclass(frozen=True)
class CreateTake:
    """The outcome of asking for a create's place: ``taken``, or refused by ``refused_by``."""

    taken: bool
    used: int  # creates in the window, this one included when taken
    reset_seconds: int  # until the oldest counted entry leaves the window (a place frees)
    refused_by: str  # "" when taken, "creates" or "refused" (too many refused creates)
    member: str


class CreateAllowance:
    """Creates per caller in any 60 s (sliding window log), and refused creates per caller likewise."""

    def __init__(self, redis: Redis, outage: RedisOutage, *, limit: int, refused_limit: int) -> None:
        self.limit = limit
        self.refused_limit = refused_limit
        self._outage = outage
        self._take = redis.register_script(_TAKE_CREATE)
        self._give_back = redis.register_script(_GIVE_BACK_CREATE)

    async def take(self, caller: str) -> CreateTake:
        """A place for one create, unless the caller has used up either allowance. Raises RedisError."""
        member = uuid.uuid4().hex
        taken, used, frees_ms, refused_by = await self._outage.call(
            self._take, [caller_key(caller, "creates"), caller_key(caller, "refused-creates")],
            [self.limit, self.refused_limit, _WINDOW_MS, member],
        )
        by = refused_by.decode() if isinstance(refused_by, bytes) else str(refused_by)
        return CreateTake(bool(taken), int(used), _seconds(int(frees_ms)), by, member)

    async def give_back(self, caller: str, member: str, *, refused: bool) -> None:
        """The create holding ``member`` was not processed: free its place; ``refused`` logs it against the
        refused-create allowance (a refusal that is free, such as a planned pause, is not). Raises RedisError."""
        await self._outage.call(
            self._give_back, [caller_key(caller, "creates"), caller_key(caller, "refused-creates")],
            [member, "1" if refused else "0", _WINDOW_MS],
        )


@dataclass(frozen=True)
class Grant:
    granted: int
    used: int  # counted in the window after this grant
    reset_ms: int  # until the window ends

    @property
    def reset_seconds(self) -> int:
        return _seconds(self.reset_ms)


class CountedAllowance:
    """``limit`` events per caller per 60 s window (fixed, starting with the caller's first counted event)."""

    def __init__(self, redis: Redis, outage: RedisOutage, name: str, *, limit: int) -> None:
        self.name = name
        self.limit = limit
        self._outage = outage
        self._take = redis.register_script(_TAKE_COUNTED)

    async def take(self, wanted: Mapping[str, int]) -> dict[str, Grant]:
        """For each caller, up to the number of events it asks for, in one round trip. Raises RedisError."""
        callers = list(wanted)
        flat = await self._outage.call(self._take, [caller_key(caller, self.name) for caller in callers],
                                       [self.limit, _WINDOW_MS, *(wanted[caller] for caller in callers)])
        return {caller: Grant(int(flat[3 * i]), int(flat[3 * i + 1]), int(flat[3 * i + 2]))
                for i, caller in enumerate(callers)}
