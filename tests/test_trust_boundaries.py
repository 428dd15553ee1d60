"""Trust boundaries the workers keep: a job written into Redis by someone else never runs."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from app import QUEUE_NAME, RETRY_QUEUE_NAME
from tests.stack import Stack
from tests.test_worker_recovery import scrape_exporter


def refused_count(stack: Stack) -> float:
    """``pose_job_failures_total{reason="refused"}`` as the exporter serves it (a fleet counter in Redis)."""
    return scrape_exporter(stack)[("pose_job_failures_total", (("reason", "refused"),))]


def wait_for_status(redis: Redis, job_id: str, status: JobStatus, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while redis.hget(Job.key_for(job_id), "status") != status.value.encode():
        assert time.monotonic() < deadline, f"job {job_id} never {status.value}"
        time.sleep(0.1)


def test_a_job_pushed_into_redis_by_someone_else_never_runs(fresh_stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Whoever can write to Redis pushes RQ jobs naming ``os.system`` onto both queues: pickled as RQ does by
    default (unpickling alone would run code), and as JSON. Each is refused, logged and counted; the command
    never runs; the worker goes on serving generations."""
    stack: Stack = fresh_stack(workers=1)
    worker = stack.workers[0]
    stack.wait_workers_ready(1)
    redis = Redis.from_url(stack.redis_url)
    marks = [tmp_path / f"pwned-{uuid.uuid4().hex}" for _ in range(3)]
    jobs = [
        Queue(QUEUE_NAME, connection=redis).enqueue("os.system", f"touch {marks[0]}"),  # pickle
        Queue(QUEUE_NAME, connection=redis, serializer=JSONSerializer).enqueue("os.system", f"touch {marks[1]}"),
        Queue(RETRY_QUEUE_NAME, connection=redis, serializer=JSONSerializer).enqueue(
            "subprocess.call", ["touch", str(marks[2])]),
    ]
    for job in jobs:
        wait_for_status(redis, job.id, JobStatus.FAILED)
    assert not [mark for mark in marks if mark.exists()], "a pushed job ran"
    assert refused_count(stack) == 3
    assert worker.output().count("Refused a job that is not one of ours") == 3
    user = stack.new_user(credits=100)
    generation_id = stack.create_generation(user, ["pose_tree_pose"]).json()["generationId"]
    assert stack.wait_finished(user, generation_id)["status"] == "completed"
    assert worker.alive()
    redis.close()
