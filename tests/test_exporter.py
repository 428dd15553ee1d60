"""The standalone exporter: its figures are the database's, survive kills, and a source down never breaks it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis import Redis
from rq import Queue, Worker
from rq.job import Job
from rq.utils import utcformat

from app import QUEUE_NAME, RETRY_QUEUE_NAME
from tests.stack import Stack, free_port
from tests.support.exporter import (
    StartExporter,
    assert_exporter_matches_database,
    exporter_fixture,  # noqa: F401 - the start_exporter fixture
    parse,
    promtool_problems,
    scrape,
    value,
)

StartStack = Callable[..., Stack]


def finish_generations(stack: Stack, user: str, pose_counts: list[int]) -> list[dict[str, Any]]:
    poses = ["pose_tree_pose", "pose_arms_crossed", "pose_waving_hello"]
    ids = []
    for count in pose_counts:
        answer = stack.create_generation(user, poses[:count])
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["generationId"])
    return [stack.wait_finished(user, generation_id) for generation_id in ids]


@pytest.mark.tools
def test_exporter_figures_are_the_database_rows_and_survive_kills(
        fresh_stack: StartStack, start_exporter: StartExporter) -> None:
    stack = fresh_stack(workers=1, POSEGEN_FAULTS="FLUX_API_ERROR=0.3,STORAGE_ERROR=0.15,CONTROLNET_ERROR=0.1")
    user = stack.new_user(credits=100_000)
    finished = finish_generations(stack, user, [1, 2, 3, 1, 2, 3])
    # Faults follow a hash of the random generation ids: go on until both outcomes occurred.
    while {g["status"] for g in finished} != {"completed", "failed"} and len(finished) < 40:
        finished += finish_generations(stack, user, [1])
    exporter, port = start_exporter(stack)
    first = scrape(port)
    assert first.headers["content-type"].startswith("text/plain")
    with stack.db() as conn:
        assert_exporter_matches_database(parse(first.text), conn)
    assert value(parse(first.text), "pose_exporter_up", source="postgres") == 1
    assert value(parse(first.text), "pose_exporter_up", source="redis") == 1
    assert promtool_problems(first.text) == ""
    api_text = stack.http.get("/metrics-prometheus").text
    assert "# TYPE" in api_text and promtool_problems(api_text) == ""
    openmetrics = scrape(port, Accept="application/openmetrics-text; version=1.0.0")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n") and "pose_generations_total{status=\"created\"}" in openmetrics.text

    # A worker killed mid-generation (its work-horse too): the reaper re-queues it, a new worker finishes it.
    # The slow worker injects no faults, so no pose of the generation fails fast and ends it before the kill.
    stack.workers[0].kill()
    slow = stack.start_worker(POSEGEN_LOCAL_LATENCY="5", POSEGEN_FAULTS="")
    in_flight = stack.create_generation(user, ["pose_tree_pose", "pose_arms_crossed"]).json()["generationId"]
    with stack.db() as conn:
        deadline = time.monotonic() + 20
        while conn.execute("SELECT status FROM generations WHERE id = %s", (in_flight,)).fetchone()[0] != "processing":
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.05)
    during = parse(scrape(port).text)
    assert value(during, "pose_generations_in_progress", status="processing") == 1
    slow.kill()
    exporter.kill()
    stack.start_worker()
    stack.wait_finished(user, in_flight, timeout=40)
    _, port = start_exporter(stack)
    after = parse(scrape(port).text)
    with stack.db() as conn:
        assert conn.execute("SELECT attempt FROM generations WHERE id = %s", (in_flight,)).fetchone()[0] == 2
        assert_exporter_matches_database(after, conn)
    before = parse(first.text)
    counters = [key for key in before
                if key[0].startswith("pose_") and key[0].endswith(("_total", "_count", "_bucket", "_sum"))]
    lower = {key: (before[key], after[key]) for key in counters if after[key] < before[key]}
    assert not lower, f"counters went down across the kills: {lower}"
    assert value(after, "pose_generations_total", status="created") == value(
        before, "pose_generations_total", status="created") + 1


def test_users_with_failed_generations_counts_distinct_users_of_the_last_hour(
        fresh_stack: StartStack, start_exporter: StartExporter) -> None:
    """The blast radius a page names: users, not generations (one user failing twice counts once), and only
    failures of the last hour (a failure finished two hours ago is left out)."""
    stack = fresh_stack(workers=1, POSEGEN_FAULTS="FLUX_API_ERROR=1.0")
    users = [stack.new_user(credits=1000) for _ in range(4)]
    for user, count in zip(users, (1, 2, 1, 1), strict=True):
        finished = finish_generations(stack, user, [1] * count)
        assert {g["status"] for g in finished} == {"failed"}, finished
    with stack.db() as conn:
        # The first user's failure (not the latest finish, which the exporter's bookkeeping keeps) aged out.
        conn.execute("UPDATE generations SET finished_at = now() - interval '2 hours' WHERE user_id = %s",
                     (users[0],))
        conn.commit()
    _, port = start_exporter(stack)
    samples = parse(scrape(port).text)
    assert value(samples, "pose_users_with_failed_generations") == 3
    with stack.db() as conn:
        assert_exporter_matches_database(samples, conn)


@pytest.fixture
def unanswering_port() -> Iterator[Callable[[str], int]]:
    """Ports where nothing answers: ``closed`` refuses connections, ``silent`` accepts them and never replies."""
    listeners: list[socket.socket] = []

    def port(kind: str) -> int:
        if kind == "closed":
            return free_port()  # nothing listens there once the probe socket is closed
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes handshakes; nobody ever reads or writes
        listeners.append(listener)
        return int(listener.getsockname()[1])

    yield port
    for listener in listeners:
        listener.close()


@pytest.mark.parametrize("down", ["redis", "postgres"])
@pytest.mark.parametrize("how", ["closed", "silent"])
def test_a_source_down_answers_quickly_with_the_other_intact(
        fresh_stack: StartStack, start_exporter: StartExporter, unanswering_port: Callable[[str], int],
        down: str, how: str) -> None:
    stack = fresh_stack(workers=0, api=False)
    with stack.db() as conn:
        conn.execute("INSERT INTO error_events (error_type, component) VALUES ('STORAGE_ERROR', 'Storage')")
    Queue(QUEUE_NAME, connection=Redis.from_url(stack.redis_url)).enqueue("app.worker.jobs.process_generation",
                                                                          "gen_x", 1)
    port = unanswering_port(how)
    if down == "redis":
        _, exporter_port = start_exporter(stack, REDIS_URL=f"redis://127.0.0.1:{port}/0")
    else:
        _, exporter_port = start_exporter(stack, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/posegen")
    for _ in range(3):
        began = time.monotonic()
        samples = parse(scrape(exporter_port).text)
        assert time.monotonic() - began < 2.0
        assert value(samples, "pose_exporter_up", source=down) == 0
        if down == "redis":
            assert value(samples, "pose_exporter_up", source="postgres") == 1
            assert value(samples, "pose_errors_total", error_type="STORAGE_ERROR") == 1
            assert not any(name in ("pose_queue_depth", "pose_queue_jobs", "pose_workers") for name, _ in samples)
        else:
            assert value(samples, "pose_exporter_up", source="redis") == 1
            assert value(samples, "pose_queue_depth") == 1
            assert not any(name.startswith("pose_errors") for name, _ in samples)


def test_exporter_reconnects_when_its_database_connection_is_cut(
        fresh_stack: StartStack, start_exporter: StartExporter) -> None:
    stack = fresh_stack(workers=0, api=False)
    _, port = start_exporter(stack)
    assert value(parse(scrape(port).text), "pose_exporter_up", source="postgres") == 1
    with stack.db() as conn:
        cut = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                           " WHERE application_name = 'posegen-exporter' AND datname = current_database()").fetchone()
        assert cut == (1,)
        conn.execute("INSERT INTO error_events (error_type, component) VALUES ('NETWORK_ERROR', 'API')")
    samples = parse(scrape(port).text)
    assert value(samples, "pose_exporter_up", source="postgres") == 1
    assert value(samples, "pose_errors_total", error_type="NETWORK_ERROR") == 1


def test_queue_metrics_count_jobs_by_state_and_the_oldest_wait(
        fresh_stack: StartStack, start_exporter: StartExporter) -> None:
    stack = fresh_stack(workers=0, api=False)
    redis = Redis.from_url(stack.redis_url)
    queue = Queue(QUEUE_NAME, connection=redis)
    waiting = [queue.enqueue("app.worker.jobs.process_generation", f"gen_{i}", 1) for i in range(5)]
    redis.hset(waiting[0].key, "enqueued_at", utcformat(datetime.now(UTC) - timedelta(seconds=90)))
    queue.enqueue_in(timedelta(hours=1), "app.worker.jobs.process_generation", "gen_later", 1)
    queue.enqueue("app.worker.jobs.process_generation", "gen_after", 1, depends_on=waiting[0])
    for registry, ttl in ((queue.failed_job_registry, 600), (queue.finished_job_registry, 600)):
        job = Job.create("app.worker.jobs.process_generation", args=("gen_done", 1), connection=redis)
        job.save()
        registry.add(job, ttl)
    busy = Worker([queue], connection=redis, name=f"busy-{stack.name}")
    busy.register_birth()
    busy.set_state("busy")
    idle = Worker([queue], connection=redis, name=f"idle-{stack.name}")
    idle.register_birth()
    idle.set_state("idle")
    _, port = start_exporter(stack)
    samples = parse(scrape(port).text)
    jobs = {state: value(samples, "pose_queue_jobs", state=state)
            for state in ("waiting", "active", "scheduled", "deferred", "failed", "finished")}
    assert jobs == {"waiting": 5, "active": 0, "scheduled": 1, "deferred": 1, "failed": 1, "finished": 1}
    assert value(samples, "pose_queue_depth") == 5
    assert value(samples, "pose_workers", state="busy") == 1 and value(samples, "pose_workers", state="idle") == 1
    assert 89 <= value(samples, "pose_queue_oldest_waiting_job_age_seconds") < 120
    redis.delete(queue.key)
    assert value(parse(scrape(port).text), "pose_queue_oldest_waiting_job_age_seconds") == 0


def test_retried_generations_waiting_and_running_count_in_the_queue_depth(
        fresh_stack: StartStack, start_exporter: StartExporter) -> None:
    """An operator's retry batch waits on the retry queue (behind new work): it is backlog all the same, for the
    QueueBacklog alerts and for whatever scales workers on pose_queue_depth."""
    stack = fresh_stack(workers=0, api=False)
    redis = Redis.from_url(stack.redis_url)
    main, retries = Queue(QUEUE_NAME, connection=redis), Queue(RETRY_QUEUE_NAME, connection=redis)
    main.enqueue("app.worker.jobs.process_generation", "gen_new", 1)
    for i in range(3):
        retries.enqueue("app.worker.jobs.process_generation", f"gen_retry_{i}", 2)
    # A live execution of a retried job: RQ keeps "job id:execution id" scored by its heartbeat's expiry.
    redis.zadd(retries.started_job_registry.key, {"job-retried:execution-1": time.time() + 600})
    _, port = start_exporter(stack)
    samples = parse(scrape(port).text)
    assert value(samples, "pose_queue_jobs", state="waiting") == 4
    assert value(samples, "pose_queue_jobs", state="active") == 1
    assert value(samples, "pose_queue_depth") == 5
