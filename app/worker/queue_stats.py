"""Job and worker counts of the ``pose-generation`` queue, read in pipelined round trips at constant cost.

RQ's own ``registry.count`` runs a cleanup first (work that grows with the registry); these read
``LLEN``/``ZCOUNT``/``ZCARD`` only. Two rules keep the counts true when a process dies without a word:

- **Live executions only.** An entry of RQ's started registry is scored with its heartbeat expiry; one
  whose expiry is in the past belongs to a work-horse that stopped heartbeating (SIGKILLed, its host
  gone), so it is not counted as active, although it stays in the registry until RQ's maintenance.
- **Live workers only.** A worker's registration outlives a SIGKILL by its key's TTL; a worker counts
  only while its ``last_heartbeat`` is younger than :data:`WORKER_STALE_SECONDS`.

RQ's registries hold *attempts* (one job per generation attempt), not generations: ``failed`` is
attempts that ended in error and were not retried into a later attempt (the reaper retires those).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.utils import str_to_date
from rq.worker import WorkerStatus
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from app import QUEUE_NAME

# RQ worker settings (app/worker/main.py): an idle worker heartbeats every WORKER_TTL_SECONDS - 15 s
# (its blocking dequeue's timeout), a busy one every JOB_MONITORING_INTERVAL_SECONDS.
WORKER_TTL_SECONDS = 30
JOB_MONITORING_INTERVAL_SECONDS = 10
# Three idle heartbeats missed: the worker is dead (or cut off from Redis, which is as bad).
WORKER_STALE_SECONDS = 45
WORKER_STATES = tuple(status.value for status in WorkerStatus)


@dataclass(frozen=True)
class QueueCounts:
    """Jobs (attempts) by state; ``active`` counts live executions only."""

    waiting: int
    active: int
    completed: int
    failed: int
    scheduled: int
    deferred: int
    workers: dict[str, int] = field(default_factory=dict)  # live workers by RQ state
    oldest_waiting_enqueued_at: float | None = None  # Unix time of the head job's enqueue

    @property
    def delayed(self) -> int:
        return self.scheduled + self.deferred

    @property
    def depth(self) -> int:
        return self.waiting + self.active


@dataclass(frozen=True)
class QueueKeys:
    queue: str
    started: str
    finished: str
    failed: str
    scheduled: str
    deferred: str
    workers: str

    @classmethod
    def of(cls, connection: Redis, queue_name: str = QUEUE_NAME) -> QueueKeys:
        queue = Queue(queue_name, connection=connection)
        return cls(
            queue=queue.key,
            started=StartedJobRegistry(queue=queue).key,
            finished=FinishedJobRegistry(queue=queue).key,
            failed=FailedJobRegistry(queue=queue).key,
            scheduled=ScheduledJobRegistry(queue=queue).key,
            deferred=DeferredJobRegistry(queue=queue).key,
            workers=WORKERS_BY_QUEUE_KEY % queue_name,
        )


def read_queue_counts(connection: Redis, keys: QueueKeys | None = None, *, with_workers: bool = False,
                      now: float | None = None) -> QueueCounts:
    """Counts of the queue now: one round trip, two with ``with_workers`` (each worker's state and heartbeat,
    and the head job's enqueue time). Raises redis-py's errors when Redis does not answer."""
    keys = keys or QueueKeys.of(connection)
    now = time.time() if now is None else now
    with connection.pipeline(transaction=False) as pipe:
        pipe.llen(keys.queue)
        pipe.zcount(keys.started, f"({now}", "+inf")  # executions whose heartbeat has not expired
        for key in (keys.finished, keys.failed, keys.scheduled, keys.deferred):
            pipe.zcard(key)
        if with_workers:
            pipe.smembers(keys.workers)
            pipe.lindex(keys.queue, 0)
        waiting, active, completed, failed, scheduled, deferred, *rest = pipe.execute()
    counts = [int(v) for v in (waiting, active, completed, failed, scheduled, deferred)]
    if not with_workers:
        return QueueCounts(*counts)
    worker_keys, head_job_id = rest
    workers, enqueued_at = _live_workers_and_head(connection, sorted(worker_keys), head_job_id, now)
    return QueueCounts(*counts, workers=workers, oldest_waiting_enqueued_at=enqueued_at)


def _live_workers_and_head(connection: Redis, worker_keys: Iterable[bytes], head_job_id: bytes | None,
                           now: float) -> tuple[dict[str, int], float | None]:
    worker_keys = list(worker_keys)
    states = dict.fromkeys(WORKER_STATES, 0)
    if not worker_keys and head_job_id is None:
        return states, None
    with connection.pipeline(transaction=False) as pipe:
        for key in worker_keys:
            pipe.hmget(key, "state", "last_heartbeat")
        if head_job_id is not None:
            pipe.hget(Job.key_for(head_job_id.decode()), "enqueued_at")
        replies = pipe.execute()
    for state, heartbeat in replies[: len(worker_keys)]:
        # A SIGKILLed worker's hash lives on for its TTL; its heartbeat stops at once.
        if state is None or heartbeat is None:
            continue
        if now - str_to_date(heartbeat).timestamp() > WORKER_STALE_SECONDS:
            continue
        name = state.decode()
        states[name] = states.get(name, 0) + 1
    enqueued_at = None
    if head_job_id is not None and replies[-1]:
        enqueued_at = str_to_date(replies[-1]).timestamp()
    return states, enqueued_at
