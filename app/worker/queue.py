"""The ``pose-generation`` RQ queue: how generations are enqueued and looked up."""

from __future__ import annotations

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from app import QUEUE_NAME
from app.domain.processing import job_id_for

# A generation's poses run concurrently; even a full one waiting for provider slots ends well within this.
JOB_TIMEOUT_SECONDS = 3600


def make_redis(redis_url: str) -> Redis:
    """A client that fails fast when Redis is unreachable, so the API can answer 503 quickly."""
    return Redis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=30)


def make_queue(connection: Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=connection)


def enqueue_generation(queue: Queue, generation_id: str, attempt: int) -> Job:
    return queue.enqueue(
        "app.worker.jobs.process_generation",
        generation_id,
        attempt,
        job_id=job_id_for(generation_id, attempt),
        job_timeout=JOB_TIMEOUT_SECONDS,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        description=f"generation {generation_id} attempt {attempt}",
    )


# States in which a job will still run (or is running); failed, finished, stopped, canceled never will.
_PENDING = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


def job_pending(connection: Redis, job_id: str) -> bool:
    """True while the job is waiting or running; False when it is gone or ended without finishing the work."""
    try:
        return Job.fetch(job_id, connection=connection).get_status(refresh=False) in _PENDING
    except NoSuchJobError:
        return False
