"""The ``pose-generation`` RQ queue: how generations are enqueued and looked up."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import Future
from concurrent.futures import InvalidStateError as FutureStateError
from queue import SimpleQueue
from typing import Any

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.executions import ExecutionRegistry
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus

from app import QUEUE_NAME, RETRY_QUEUE_NAME
from app.domain.processing import job_id_for
from app.observability.logging import get_logger

log = get_logger("API")

# A generation's poses run concurrently; even a full one waiting for provider slots ends well within this.
JOB_TIMEOUT_SECONDS = 3600


# TCP keepalive probes after 10 s idle, every 5 s, 3 missed: a connection whose route died breaks in ~25 s.
REDIS_KEEPALIVE_OPTIONS = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}
# A pooled connection idle this long is PINGed before use, so a silently dead one is replaced, not used.
REDIS_HEALTH_CHECK_SECONDS = 10


def redis_options(socket_timeout: float | None = 2.0) -> dict[str, Any]:
    """redis-py client options shared by every long-lived client (sync and asyncio): bounded connect and
    reads (``socket_timeout``: a peer that stops answering fails the command instead of hanging it),
    TCP keepalives and a health check of connections that sat idle."""
    return {
        "socket_connect_timeout": 1.0, "socket_timeout": socket_timeout, "socket_keepalive": True,
        "socket_keepalive_options": REDIS_KEEPALIVE_OPTIONS, "health_check_interval": REDIS_HEALTH_CHECK_SECONDS,
    }


def make_redis(redis_url: str) -> Redis:
    """A client that fails fast when Redis is unreachable or silent, so the API can answer 503 quickly.

    A command whose connection failed or timed out is retried twice on a fresh connection (a connection
    that went silent is replaced, not waited on). Commands here are safe to repeat: an enqueue whose
    answer was lost may deliver its job twice, and the second delivery finds the generation already
    claimed and skips it."""
    return Redis.from_url(redis_url, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2), **redis_options())


def make_queue(connection: Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=connection)


def make_retry_queue(connection: Redis) -> Queue:
    """The queue of retried generations; workers listen to it after the main one, so new work goes first."""
    return Queue(RETRY_QUEUE_NAME, connection=connection)


def generation_job(generation_id: str, attempt: int) -> Any:
    """The RQ job data of one generation attempt (for :meth:`rq.Queue.enqueue_many`)."""
    return Queue.prepare_data(
        "app.worker.jobs.process_generation",
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


ENQUEUE_WAIT_SECONDS = 15.0


class BatchEnqueuer:
    """Enqueues generation jobs from one thread, one Redis transaction for all jobs waiting at that moment.

    The Redis client is synchronous, so enqueues must stay off the API's event loop; one thread that
    drains whatever piled up while it was busy costs a third of the CPU of an enqueue per request on a
    thread pool, and keeps the pool's threads from competing with the event loop for the GIL. A request
    still waits for its own job to be in Redis before answering; when Redis refuses a batch, every request
    in it gets the error (and refunds its generation).
    """

    def __init__(self, queue: Queue, max_batch: int = 64) -> None:
        self._queue = queue
        self._max_batch = max_batch
        self._pending: SimpleQueue[tuple[str, int, Future[None]] | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="posegen-enqueuer", daemon=True)
        self._thread.start()

    async def enqueue(self, generation_id: str, attempt: int) -> None:
        future: Future[None] = Future()
        self._pending.put((generation_id, attempt, future))
        # A request cancelled while waiting still has its job enqueued: it was charged. The wait is
        # bounded (the Redis client's own timeouts end a batch well before) so no request hangs.
        await asyncio.wait_for(asyncio.wrap_future(future), ENQUEUE_WAIT_SECONDS)

    def close(self, timeout: float = 5.0) -> None:
        self._pending.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:  # a bug here must not leave requests waiting without a word
            log.exception("Enqueuer thread stopped")
            raise

    def _serve(self) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                return
            batch = [item]
            closing = False
            while len(batch) < self._max_batch and not self._pending.empty():
                more = self._pending.get()
                if more is None:
                    closing = True
                    break
                batch.append(more)
            self._enqueue(batch)
            if closing:
                return

    def _enqueue(self, batch: list[tuple[str, int, Future[None]]]) -> None:
        error: BaseException | None = None
        try:
            self._queue.enqueue_many([generation_job(generation_id, attempt) for generation_id, attempt, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            error = exc
        for *_, future in batch:
            try:
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
            except FutureStateError:
                pass


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
        queue = Queue(origin.decode(), connection=connection) if origin else make_queue(connection)
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
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        job = None
    with connection.pipeline() as pipe:
        pipe.lrem(IntermediateQueue.get_intermediate_queue_key(queue.key), 0, job_id)
        if job is not None:
            job.delete(pipeline=pipe)
        pipe.execute()
