"""Planned pauses: of intake (``POST /generations`` answers 503) and of workers (drain, RQ's suspension).

Both live in Redis, next to the queue they hold back, so every API process, worker and the exporter
see the same state. Intake: one key holding who paused, when, why and the Retry-After to answer.
Workers: RQ's own ``rq:suspended`` key (:mod:`rq.suspension`, what ``rq suspend`` sets): a worker
finishes the job it runs and takes no new one until resumed.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Worker
from rq.suspension import is_suspended, resume, suspend

INTAKE_PAUSED_KEY = "posegen:intake-paused"
# How long an API process trusts what it last read: a pause reaches every process within this.
INTAKE_STATE_TTL_SECONDS = 1.0


@dataclass(frozen=True)
class IntakePause:
    paused_by: str
    paused_at: float
    reason: str
    retry_after_seconds: int

    def as_json(self) -> dict[str, Any]:
        return {"pausedBy": self.paused_by, "pausedAt": self.paused_at, "reason": self.reason,
                "retryAfterSeconds": self.retry_after_seconds}


def read_intake_pause(redis: Redis) -> IntakePause | None:
    raw = redis.get(INTAKE_PAUSED_KEY)
    if raw is None:
        return None
    data = json.loads(raw)
    return IntakePause(str(data["pausedBy"]), float(data["pausedAt"]), str(data["reason"]),
                       int(data["retryAfterSeconds"]))


def pause_intake(redis: Redis, actor: str, reason: str, retry_after_seconds: int) -> bool:
    """Pause intake; True when this paused it, False when it was already paused (kept as it was)."""
    pause = IntakePause(actor, time.time(), reason, retry_after_seconds)
    return bool(redis.set(INTAKE_PAUSED_KEY, json.dumps(pause.as_json()), nx=True))


def resume_intake(redis: Redis) -> bool:
    """True when intake was paused."""
    return bool(redis.delete(INTAKE_PAUSED_KEY))


def workers_paused(redis: Redis) -> bool:
    return bool(is_suspended(redis))


def worker_states(redis: Redis) -> dict[str, int]:
    """Registered RQ workers by state (``suspended`` once one has seen the suspension, ``busy`` while it
    finishes a job): a drain is complete when every worker is suspended."""
    states: dict[str, int] = {}
    for worker in Worker.all(connection=redis):
        state = str(worker.get_state())
        states[state] = states.get(state, 0) + 1
    return states


def pause_workers(redis: Redis) -> bool:
    """Suspend every RQ worker of this Redis; True when they were running."""
    was = workers_paused(redis)
    suspend(redis)
    return not was


def resume_workers(redis: Redis) -> bool:
    """True when the workers were suspended."""
    return bool(resume(redis))


class IntakeGate:
    """What ``POST /generations`` checks: the intake pause, read from Redis at most once per
    :data:`INTAKE_STATE_TTL_SECONDS` per process (a create pays no Redis round trip for it)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._state: IntakePause | None = None
        self._read_at = float("-inf")

    async def current(self) -> IntakePause | None:
        """The pause in force, or None. While Redis cannot be read the last state stands (the create's
        enqueue then answers 503 on its own)."""
        now = time.monotonic()
        if now - self._read_at >= INTAKE_STATE_TTL_SECONDS:
            try:
                # The Redis client is synchronous: off the event loop.
                self._state = await asyncio.to_thread(read_intake_pause, self._redis)
            except RedisError:
                return self._state
            self._read_at = now
        return self._state

    def remember(self, state: IntakePause | None) -> None:
        """This process changed the state itself: no need to wait for the next read."""
        self._state = state
        self._read_at = time.monotonic()
