"""How long the provider's tasks take lately, shared by every worker process through Redis.

The FLUX provider polls for a task's result. With a fixed interval a finished task waits on
average half an interval before anyone notices, holding its provider slot all that while. Knowing
roughly when tasks finish, the provider polls finely only around that moment (see
``FluxProvider._poll``). The estimate is a moving average of submit-to-Ready times per model; losing
it (Redis down or flushed) only falls back to the fixed interval.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

_KEY = "posegen:provider-task-seconds:"
# Weight of the newest observation: a handful of tasks moves the estimate most of the way.
_WEIGHT = 0.2
_TTL_SECONDS = 24 * 3600


class TaskDurations:
    def __init__(self, redis: Redis, model: str) -> None:
        self._redis = redis
        self._key = _KEY + model

    async def expected(self) -> float | None:
        """Seconds a task takes lately, or None when there is no recent figure."""
        try:
            raw = await self._redis.get(self._key)
        except RedisError:
            return None
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None

    async def observe(self, seconds: float) -> None:
        """Fold one task's submit-to-Ready time into the estimate (last writer wins; it is an estimate)."""
        try:
            current = await self.expected()
            value = seconds if current is None else current + _WEIGHT * (seconds - current)
            await self._redis.set(self._key, f"{value:.4f}", ex=_TTL_SECONDS)
        except RedisError:
            pass
