"""The RQ worker class of ``posegen worker``: RQ's own, counting every failed job by reason.

A job is one attempt at a generation. RQ fails it when the job raised (``exception``), ran past its
timeout (``timeout``), was stopped on request (``stopped``), or when its work-horse died under it
(``work_horse_died``: killed, out of memory). Each is counted in the fleet's metrics in Redis
(``pose_job_failures_total{reason}``), in the process that saw it: the work-horse for the first three,
the worker for a dead work-horse. A worker killed together with its work-horse sees nothing; its
generation shows up as a re-queue (``pose_generation_requeues_total{reason="lease_expired"}``).
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError
from rq import Worker

from app.observability.fleet_metrics import JOB_FAILURES, add_count
from app.observability.logging import get_logger

log = get_logger("Worker")


def failure_reason(exc_string: str) -> str:
    """The closed-set reason of a failure RQ describes with ``exc_string``."""
    if exc_string.startswith("Work-horse terminated unexpectedly"):
        return "work_horse_died"
    if "JobTimeoutException" in exc_string:
        return "timeout"
    if exc_string.startswith("Job stopped by user"):
        return "stopped"
    return "exception"


class CountingWorker(Worker):
    def handle_job_failure(self, job: Any, queue: Any, started_job_registry: Any = None, exc_string: str = "",
                           execution: Any = None) -> None:
        try:
            add_count(self.connection, JOB_FAILURES, failure_reason(exc_string))
        except RedisError as exc:
            log.warning("Could not count a failed job", jobId=job.id, error=str(exc))
        super().handle_job_failure(job, queue, started_job_registry=started_job_registry, exc_string=exc_string,
                                   execution=execution)
