"""The RQ worker class of ``posegen worker``: RQ's own, counting every failed job by reason.

A job is one attempt at a generation. RQ fails it when the job raised (``exception``), ran past its
timeout (``timeout``), was stopped on request (``stopped``), or when its work-horse died under it
(``work_horse_died``: killed, out of memory). A job that is not one of ours (``refused``: a function outside
:data:`app.queue.JOB_FUNCTIONS`, or data that is not our JSON) is never run: Redis is a trust boundary, and
anyone who can write to it could otherwise run code on the workers. Each is counted in the fleet's metrics in Redis
(``pose_job_failures_total{reason}``), in the process that saw it: the work-horse for the first three,
the worker for a dead work-horse. A worker killed together with its work-horse sees nothing; its
generation shows up as a re-queue (``pose_generation_requeues_total{reason="lease_expired"}``).
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError
from rq import Worker
from rq.exceptions import DeserializationError

from app.observability.fleet_metrics import JOB_FAILURES, add_count
from app.observability.logging import get_logger
from app.queue import JOB_FUNCTIONS, JOB_SERIALIZER, PoseJob

log = get_logger("Worker")


def failure_reason(exc_string: str) -> str:
    """The closed-set reason of a failure RQ describes with ``exc_string``."""
    if exc_string.startswith("Work-horse terminated unexpectedly"):
        return "work_horse_died"
    if "JobTimeoutException" in exc_string:
        return "timeout"
    if exc_string.startswith("Job stopped by user"):
        return "stopped"
    if exc_string.startswith(REFUSED):
        return "refused"
    return "exception"


REFUSED = "Refused: not a posegen job"


def job_refusal(job: Any) -> str | None:
    """Why ``job`` must not run (one line), or None for one of ours: its data must be our JSON naming a
    function of :data:`app.queue.JOB_FUNCTIONS` with plain arguments."""
    try:
        func_name, args, kwargs = job.func_name, job.args, job.kwargs
    except (DeserializationError, ValueError, TypeError) as exc:
        return f"{REFUSED} (its data is not a JSON job: {type(exc).__name__})"
    if func_name not in JOB_FUNCTIONS:
        return f"{REFUSED} (function {str(func_name)[:200]!r} is not one of the pipeline's)"
    if kwargs or not all(isinstance(arg, (str, int)) for arg in args):
        return f"{REFUSED} (arguments of another shape than (generation id, attempt))"
    hooks = getattr(job, "untrusted_hooks", ())
    if hooks:  # never run (PoseJob drops them when it reads the job), but a job of ours never has any
        return f"{REFUSED} (it carries {', '.join(hooks)}, which the pipeline never sets)"
    return None


class CountingWorker(Worker):
    """RQ's worker with JSON jobs only, refusing any job that is not one of ours, and counting failures."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JOB_SERIALIZER)
        kwargs.setdefault("job_class", PoseJob)  # registries' maintenance reads jobs through it too
        super().__init__(*args, **kwargs)

    def execute_job(self, job: Any, queue: Any) -> None:
        refusal = job_refusal(job)
        if refusal is None:
            super().execute_job(job, queue)
            return
        log.error("Refused a job that is not one of ours", jobId=job.id, queue=queue.name, reason=refusal)
        self.handle_job_failure(job, queue, exc_string=refusal)

    def handle_job_failure(self, job: Any, queue: Any, started_job_registry: Any = None, exc_string: str = "",
                           execution: Any = None) -> None:
        try:
            add_count(self.connection, JOB_FAILURES, failure_reason(exc_string))
        except RedisError as exc:
            log.warning("Could not count a failed job", jobId=job.id, error=str(exc))
        super().handle_job_failure(job, queue, started_job_registry=started_job_registry, exc_string=exc_string,
                                   execution=execution)
