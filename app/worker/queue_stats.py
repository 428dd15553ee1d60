"""Job counts of the ``pose-generation`` queue, read in one Redis round trip at constant cost.

RQ's own ``registry.count`` runs a cleanup first (work that grows with the
registry); these read ``LLEN``/``ZCARD`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from app.worker.queue import make_queue


@dataclass(frozen=True)
class QueueCounts:
    waiting: int
    active: int
    completed: int
    failed: int
    scheduled: int
    deferred: int

    @property
    def delayed(self) -> int:
        return self.scheduled + self.deferred

    @property
    def depth(self) -> int:
        return self.waiting + self.active


def queue_keys(connection: Redis) -> list[str]:
    queue = make_queue(connection)
    registries = (StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry, ScheduledJobRegistry,
                  DeferredJobRegistry)
    return [queue.key, *(cls(queue=queue).key for cls in registries)]


def read_queue_counts(connection: Redis) -> QueueCounts:
    waiting_key, *registry_keys = queue_keys(connection)
    with connection.pipeline(transaction=False) as pipe:
        pipe.llen(waiting_key)
        for key in registry_keys:
            pipe.zcard(key)
        waiting, active, completed, failed, scheduled, deferred = (int(v) for v in pipe.execute())
    return QueueCounts(waiting, active, completed, failed, scheduled, deferred)
