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
from tests.support.worker_recovery import scrape_exporter


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


def test_callbacks_and_webhooks_written_into_redis_never_run(fresh_stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """RQ jobs may carry callbacks (a module path RQ imports and calls) and webhooks (URLs RQ requests when a job
    ends): a Redis writer put them on a job naming the pipeline's own function, and on a foreign job placed
    straight into the started registry, which the worker's maintenance fails (calling its failure callback,
    in the worker itself). Neither is imported nor requested; the pipeline job is refused and counted."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from rq.job import Callback
    from rq.webhook import Webhook

    mark = tmp_path / "imported"
    (tmp_path / "planted_callback.py").write_text(f"open({str(mark)!r}, 'w').close()\ndef hook(*a, **k): pass\n")
    requested: list[str] = []

    class Collector(BaseHTTPRequestHandler):
        def _record(self) -> None:
            requested.append(self.path)
            self.send_response(204)
            self.end_headers()

        do_GET = do_POST = _record

        def log_message(self, *args: object) -> None:
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{collector.server_address[1]}"
    try:
        stack: Stack = fresh_stack(workers=0, PYTHONPATH=str(tmp_path))
        redis = Redis.from_url(stack.redis_url)
        queue = Queue(QUEUE_NAME, connection=redis, serializer=JSONSerializer)
        ours = queue.enqueue("app.worker.jobs.process_generation", "gen_00000000000000000000dead", 1,
                             on_success=Callback("planted_callback.hook"), on_failure=Callback("planted_callback.hook"),
                             webhooks=[Webhook(f"{hook_url}/ours", "finished"), Webhook(f"{hook_url}/ours", "failed")])
        planted = Job.create("os.system", args=("true",), connection=redis, serializer=JSONSerializer,
                             origin=QUEUE_NAME, on_failure=Callback("planted_callback.hook"),
                             webhooks=[Webhook(f"{hook_url}/planted", "failed")])
        planted.set_status(JobStatus.STARTED)
        planted.save()
        redis.zadd(f"rq:wip:{QUEUE_NAME}", {f"{planted.id}:exec1": 1})  # its heartbeat long expired
        worker = stack.start_worker()  # its start-up maintenance finds the planted execution
        wait_for_status(redis, ours.id, JobStatus.FAILED)
        wait_for_status(redis, planted.id, JobStatus.FAILED)
        assert not mark.exists(), "a callback named in Redis was imported"
        assert requested == [], f"a webhook named in Redis was requested: {requested}"
        assert "Refused a job that is not one of ours" in worker.output()
        assert refused_count(stack) >= 1
        redis.close()
    finally:
        collector.shutdown()
