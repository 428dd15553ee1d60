"""What the image provider's calls tell on-call, added to the fleet's metrics in Redis as it happens.

``pose_provider_task_duration_seconds`` (the provider's own time for a task), 429 answers by step and
retries by reason (:mod:`app.observability.fleet_metrics`). Each event is one pipelined round trip,
made only on events (one per pose, plus one per 429 or retry); a Redis error loses the figure, never
the pose.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.observability import tracing
from app.observability.fleet_metrics import (
    PROVIDER_RATE_LIMITED,
    PROVIDER_RETRIES,
    PROVIDER_TASK,
    FleetCounter,
    add_count,
    add_observation,
)


class ProviderCallMetrics:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def task_finished(self, seconds: float, generation_id: str) -> None:
        """One task done in ``seconds``; with tracing on, its trace becomes the bucket's exemplar."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                add_observation(pipe, PROVIDER_TASK, seconds, tracing.exemplar_labels(generation_id))
                await pipe.execute()
        except RedisError:
            pass

    async def rate_limited(self, step: str) -> None:
        """The provider answered 429 to a ``submit``, ``poll`` or ``download`` call."""
        await self._count(PROVIDER_RATE_LIMITED, step)

    async def retried(self, reason: str) -> None:
        """A call is about to be retried: ``rate_limited``, ``server_error``, ``timeout`` or ``network``."""
        await self._count(PROVIDER_RETRIES, reason)

    async def _count(self, counter: FleetCounter, value: str) -> None:
        try:
            await add_count(self._redis, counter, value)
        except RedisError:
            pass
