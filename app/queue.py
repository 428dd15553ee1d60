"""The ``pose-generation`` RQ queues, one home for what the API, the worker and the exporter share: job
naming, enqueueing, whether a job will still run, and the registries' keys and counts.

Counts are read in pipelined round trips at constant cost. RQ's own ``registry.count`` runs a cleanup
first (work that grows with the registry); these read ``LLEN``/``ZCOUNT``/``ZCARD`` only. Two rules keep
the counts true when a process dies without a word:

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
from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.executions import ExecutionRegistry
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.serializers import JSONSerializer
from rq.utils import str_to_date
from rq.worker import WorkerStatus
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from app import QUEUE_NAME, RETRY_QUEUE_NAME

# The job function of a generation attempt; its arguments are ``(generation id, attempt)``.
GENERATION_JOB = "app.worker.jobs.process_generation"
# Every job function a worker runs; any other job found in Redis is refused (app/worker/job_failures.py).
JOB_FUNCTIONS = frozenset({GENERATION_JOB})
# Jobs are stored as JSON, never pickle: unpickling a job written into Redis by someone else would run their
# code in the worker before any check could look at it.
JOB_SERIALIZER = JSONSerializer
# A generation's poses run concurrently; even a full one waiting for provider slots ends well within this.
JOB_TIMEOUT_SECONDS = 3600


class PoseJob(Job):
    """RQ's job without the hooks the pipeline never uses: callbacks (a module path RQ imports and calls, in the
    work-horse or, for a job found in the started registry, in the worker itself) and webhooks (URLs RQ
    requests when a job ends). A job read from Redis keeps none of them, whoever wrote it; the names of those
    it carried stay in :attr:`untrusted_hooks`, and the worker refuses such a job (app/worker/job_failures.py)."""

    untrusted_hooks: tuple[str, ...] = ()

    def restore(self, raw_data: Any) -> Any:
        restored = super().restore(raw_data)
        self.untrusted_hooks = tuple(name for name, value in (
            ("success callback", self._success_callback_name), ("failure callback", self._failure_callback_name),
            ("stopped callback", self._stopped_callback_name), ("webhooks", self.webhooks)) if value)
        self._success_callback_name = self._failure_callback_name = self._stopped_callback_name = None
        self.webhooks = []
        return restored


def job_id_for(generation_id: str, attempt: int) -> str:
    """The RQ job id of one attempt of a generation: ``<generation id>-a<attempt>``."""
    return f"{generation_id}-a{attempt}"


def make_queue(connection: Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=connection, serializer=JOB_SERIALIZER, job_class=PoseJob)


def make_retry_queue(connection: Redis) -> Queue:
    """The queue of retried generations; workers listen to it after the main one, so new work goes first."""
    return Queue(RETRY_QUEUE_NAME, connection=connection, serializer=JOB_SERIALIZER, job_class=PoseJob)


def generation_job(generation_id: str, attempt: int) -> Any:
    """The RQ job data of one generation attempt (for :meth:`rq.Queue.enqueue_many`)."""
    return Queue.prepare_data(
        GENERATION_JOB,
        (generation_id, attempt),
        job_id=job_id_for(generation_id, attempt),
        timeout=JOB_TIMEOUT_SECONDS,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        description=f"generation {generation_id} attempt {attempt}",
    )


def enqueue_generation(queue: Queue, generation_id: str, attempt: int) -> Job:
    """Enqueue one attempt now (a traced call: with APM on, the job carries the caller's trace)."""
    job = generation_job(generation_id, attempt)
    return queue.enqueue(
        job.func, *job.args, job_id=job.job_id, job_timeout=job.timeout, result_ttl=job.result_ttl,
        failure_ttl=job.failure_ttl, description=job.description,
    )


def job_pending(connection: Redis, job_id: str, now: float | None = None) -> bool:
    """True while the job will still run: it waits in the queue's list, is deferred or scheduled, or a live
    execution runs it (its heartbeat has not expired).

    False when it is gone, ended, or held by nobody: a job RQ still calls ``queued`` that sits in no list
    was handed to a worker whose blocking dequeue never got the answer (the connection went silent), and
    an execution whose heartbeat expired belongs to a dead work-horse.
    """
    now = time.time() if now is None else now
    with connection.pipeline(transaction=False) as pipe:
        pipe.hmget(Job.key_for(job_id), "status", "origin")
        pipe.zcount(ExecutionRegistry(job_id, connection).key, f"({now}", "+inf")
        (status, origin), live_executions = pipe.execute()
    if status is None:
        return False
    state = status.decode()
    if state in (JobStatus.DEFERRED, JobStatus.SCHEDULED):
        return True
    if state == JobStatus.QUEUED:  # in the list of the queue it was enqueued on (new work or retries)
        queue = Queue(origin.decode(), connection=connection, serializer=JOB_SERIALIZER, job_class=PoseJob) \
            if origin else make_queue(connection)
        return connection.lpos(queue.key, job_id) is not None
    if state == JobStatus.STARTED:
        return int(live_executions) > 0
    return False


def retire_attempt(connection: Redis, job_id: str) -> None:
    """Remove an abandoned attempt's job from every RQ list and registry (queue, intermediate list of a lost
    dequeue, started, failed) and delete it, so a re-queued generation's earlier attempt is never counted as
    running or failed, and RQ's maintenance never turns it into a failure. Idempotent."""
    queue = make_queue(connection)
    try:
        job = PoseJob.fetch(job_id, connection=connection, serializer=JOB_SERIALIZER)
    except NoSuchJobError:
        job = None
    with connection.pipeline() as pipe:
        pipe.lrem(IntermediateQueue.get_intermediate_queue_key(queue.key), 0, job_id)
        if job is not None:
            job.delete(pipeline=pipe)
        pipe.execute()


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
    """The Redis keys of one queue's list and registries; for the main queue, also its retry queue's: a
    retried generation waits there (behind new work) and runs there, and it is waiting or running all the same."""

    queue: str
    started: str
    finished: str
    failed: str
    scheduled: str
    deferred: str
    workers: str
    retry: QueueKeys | None = None

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
            retry=cls.of(connection, RETRY_QUEUE_NAME) if queue_name == QUEUE_NAME else None,
        )


def read_queue_counts(connection: Redis, keys: QueueKeys | None = None, *, with_workers: bool = False,
                      now: float | None = None) -> QueueCounts:
    """Counts of the queue and its retry queue now (waiting, active, finished and failed are their sums; the
    head job is the main queue's): one round trip, two with ``with_workers`` (each worker's state and
    heartbeat, and the head job's enqueue time). Raises redis-py's errors when Redis does not answer."""
    keys = keys or QueueKeys.of(connection)
    now = time.time() if now is None else now
    queues = [keys, *([keys.retry] if keys.retry else [])]
    with connection.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue.queue)
            pipe.zcount(queue.started, f"({now}", "+inf")  # executions whose heartbeat has not expired
            pipe.zcard(queue.finished)
            pipe.zcard(queue.failed)
        pipe.zcard(keys.scheduled)
        pipe.zcard(keys.deferred)
        if with_workers:
            pipe.smembers(keys.workers)
            pipe.lindex(keys.queue, 0)
        replies = pipe.execute()
    per_queue = [replies[i:i + 4] for i in range(0, 4 * len(queues), 4)]
    waiting, active, completed, failed = (sum(int(counts[k]) for counts in per_queue) for k in range(4))
    scheduled, deferred, *rest = replies[4 * len(queues):]
    counts = (waiting, active, completed, failed, int(scheduled), int(deferred))
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
