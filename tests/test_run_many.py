"""Running many: several workers on one host, a worker pool, several API processes — with exact metrics."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from rq import Worker

from app import API_PREFIX
from tests.fakes.tcp_proxy import TcpProxy
from tests.stack import Process, Stack, free_port, running_stack, worker_operation_counts

POSES = ["pose_tree_pose", "pose_arms_crossed"]


@pytest.fixture(scope="module")
def api_stack(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An API and no workers: each test starts the workers it is about, and stops them."""
    with running_stack(template_db, tmp_path_factory.mktemp("runmany"), workers=0) as running:
        yield running


def _run_generations(stack: Stack, count: int) -> None:
    user = stack.new_user(credits=100_000)
    ids = [stack.create_generation(user, POSES, prompt=f"many {i}").json()["generationId"] for i in range(count)]
    for generation_id in ids:
        assert stack.wait_finished(user, generation_id, timeout=120)["status"] == "completed"


def _status(stack: Stack, user: str, generation_id: str) -> str:
    return str(stack.http.get(f"/generations/{generation_id}", headers=stack.headers(user)).json()["status"])


def _settled_counts(port: int, poses: int, timeout: float = 15) -> dict[str, float]:
    """The endpoint's counts once every work-horse has flushed (flushing follows a generation's last write)."""
    deadline = time.monotonic() + timeout
    counts: dict[str, float] = {}
    while time.monotonic() < deadline:
        counts = worker_operation_counts(port)
        if counts.get("pose_total", 0) >= poses:
            time.sleep(0.5)  # anything beyond the expected count would show up now
            return worker_operation_counts(port)
        time.sleep(0.2)
    return counts


def _jobs_done_by_worker(stack: Stack) -> dict[str, int]:
    client = Redis.from_url(stack.redis_url)
    try:
        return {worker.name: worker.successful_job_count for worker in Worker.all(connection=client)}
    finally:
        client.close()


def _stop_all(stack: Stack, processes: list[Process]) -> None:
    for process in processes:
        process.stop()
    stack.workers = [w for w in stack.workers if w not in processes]


def test_workers_on_one_host_share_the_metrics_port(api_stack: Stack) -> None:
    stack = api_stack
    port = free_port()
    workers = [stack.start_worker(metrics_port=port, POSEGEN_LOCAL_LATENCY="0.4") for _ in range(3)]
    try:
        stack.wait_workers_ready(3)
        assert all(w.alive() for w in workers), stack.logs()
        told = [w for w in workers if f"Metrics port {port} is in use" in w.output()]
        assert len(told) == 2, stack.logs()
        assert all("Traceback" not in w.output() for w in workers)
        _run_generations(stack, 9)
        counts = _settled_counts(port, 18)
        assert counts["pose_total"] == 18 and counts["provider_call"] == 18 and counts["queue_wait"] == 9, counts
        assert sum(1 for done in _jobs_done_by_worker(stack).values() if done) >= 2, _jobs_done_by_worker(stack)
        # The holder stops: another takes the port over and the totals carry on from the shared hash.
        holder = next(w for w in workers if w not in told)
        holder.stop()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                counts = worker_operation_counts(port)
                break
            except Exception:
                time.sleep(0.5)
        assert counts["pose_total"] == 18, counts
        assert any("Took over metrics port" in w.output() for w in told), stack.logs()
    finally:
        _stop_all(stack, workers)


def test_worker_pool_runs_restarts_and_stops_cleanly(api_stack: Stack) -> None:
    stack = api_stack
    pool = stack.start_worker("--processes", "3", POSEGEN_LOCAL_LATENCY="1.5")
    try:
        stack.wait_workers_ready(3)
        members = sorted(pool.children())
        assert len(members) == 3, members
        _run_generations(stack, 6)
        counts = _settled_counts(pool.metrics_port, 12)
        assert counts["pose_total"] == 12 and counts["image_upload"] == 12 and counts["queue_wait"] == 6, counts
        assert sum(1 for done in _jobs_done_by_worker(stack).values() if done) >= 2, _jobs_done_by_worker(stack)
        # Every generation so far had 2 poses: a cap of 8 needs 8 / min(2, 8) = 4 processes.
        status = subprocess.run([sys.executable, "-m", "app.cli", "status", "--url", stack.base_url, "--period", "1h"],
                                env={**stack.env, "POSEGEN_PROVIDER_CONCURRENCY": "8"}, capture_output=True,
                                text=True, timeout=60)
        assert ("provider cap 8 / min(2.0 poses per generation, POSEGEN_POSE_CONCURRENCY 8) = at least 4 worker "
                "processes to keep it full; 3 registered now") in status.stdout, status.stdout + status.stderr

        # A worker that dies is replaced.
        os.kill(members[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (len(pool.children()) != 3 or members[0] in pool.children()):
            time.sleep(0.2)
        assert len(pool.children()) == 3 and members[0] not in pool.children(), pool.output()
        assert "Worker process exited; the pool starts another" in pool.output()

        # SIGTERM while a generation runs: it finishes, then every worker leaves and the pool exits 0.
        user = stack.new_user(credits=1000)
        generation_id = stack.create_generation(user, POSES).json()["generationId"]
        deadline = time.monotonic() + 20
        while _status(stack, user, generation_id) != "processing" and time.monotonic() < deadline:
            time.sleep(0.05)
        pool.popen.send_signal(signal.SIGTERM)
        assert pool.popen.wait(timeout=30) == 0, pool.output()
        body = stack.wait_finished(user, generation_id, timeout=5)
        assert body["status"] == "completed", body
        with stack.db() as conn:
            (attempts,) = conn.execute("SELECT attempt FROM generations WHERE id = %s", (generation_id,)).fetchone()
        assert attempts == 1  # finished by its first worker, not re-queued
        # Every worker unregistered itself; only the killed one's registration waits for its TTL.
        client = Redis.from_url(stack.redis_url)
        assert [w.pid for w in Worker.all(connection=client)] in ([], [members[0]])
        client.close()
    finally:
        _stop_all(stack, [pool])


def _requests_by_process(metrics_dir: Path, route_suffix: str) -> dict[str, float]:
    """Each API process's own count of GET ``route_suffix`` answered 200, read from its file alone."""
    counts: dict[str, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        single = metrics_dir.parent / f"single-{path.stem}"
        single.mkdir(exist_ok=True)
        shutil.copy(path, single / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(single))
        counts[path.stem] = _request_count(generate_latest(registry).decode(), route_suffix)
    return counts


def _request_count(text: str, route_suffix: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "pose_http_requests_total" and sample.labels["route"].endswith(route_suffix)
               and sample.labels["method"] == "GET" and sample.labels["status_code"] == "200")


def test_api_processes_serve_exact_metrics_on_one_port(api_stack: Stack, tmp_path: Path) -> None:
    stack = api_stack
    metrics_dir = tmp_path / "metrics"
    env = {**stack.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    # A previous run's file in the folder: `posegen api` must start from zero, not add to it.
    metrics_dir.mkdir()
    subprocess.run([sys.executable, "-c", "from prometheus_client import Counter; Counter('pose_http_requests', "
                    "'x', ['method', 'route', 'status_code']).labels('GET', '/x/poses', '200').inc(1000)"],
                   env=env, check=True)
    assert list(metrics_dir.glob("counter_*.db"))
    port = free_port()
    api = Process(["api", "--port", str(port), "--workers", "2"], env, tmp_path / "api-2.log")
    base = f"http://127.0.0.1:{port}{API_PREFIX}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert len(api.children()) >= 2, api.output()
        live = httpx.get(f"{base}/health/live", timeout=5)
        assert live.status_code == 200 and live.text == "alive"
        headers = stack.headers(stack.new_user())
        sent = 300

        def one(_: int) -> int:
            # A new connection each time, so the kernel hands requests to both processes.
            return httpx.get(f"{base}/poses", params={"limit": 1}, headers=headers, timeout=10).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            assert set(pool.map(one, range(sent))) == {200}
        text = httpx.get(f"{base}/metrics-prometheus", timeout=5).text
        assert _request_count(text, "/poses") == sent
        assert "pose_build_info{" in text  # a custom collector, served beside the summed files
        by_process = _requests_by_process(metrics_dir, "/poses")
        assert sum(by_process.values()) == sent and sum(1 for n in by_process.values() if n) == 2, by_process
    finally:
        api.stop()


def test_a_killed_pool_takes_its_workers_down(api_stack: Stack) -> None:
    stack = api_stack
    pool = stack.start_worker("--processes", "2")
    try:
        stack.wait_workers_ready(2)
        members = pool.children()
        assert len(members) == 2
        os.kill(pool.pid, signal.SIGKILL)  # no chance to stop them: the kernel tells them (PR_SET_PDEATHSIG)
        pool.popen.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in members):
            time.sleep(0.2)
        assert not [pid for pid in members if Path(f"/proc/{pid}").exists()], pool.output()
    finally:
        _stop_all(stack, [pool])


def test_a_worker_that_cannot_bind_its_metrics_address_still_works(api_stack: Stack) -> None:
    stack = api_stack
    worker = stack.start_worker("--metrics-host", "192.0.2.1")  # TEST-NET-1: not an address of this host
    try:
        stack.wait_workers_ready(1)
        _run_generations(stack, 1)
        assert worker.alive() and "Traceback" not in worker.output()
        assert "Cannot serve metrics on 192.0.2.1" in worker.output()
    finally:
        _stop_all(stack, [worker])


@pytest.mark.parametrize("command, stop_signal", [((), signal.SIGTERM), ((), signal.SIGINT),
                                                  (("--processes", "2"), signal.SIGTERM),
                                                  (("--processes", "2"), signal.SIGINT)],
                         ids=["worker-sigterm", "worker-sigint", "pool-sigterm", "pool-sigint"])
def test_an_idle_worker_leaves_at_once_when_asked(api_stack: Stack, command: tuple[str, ...],
                                                  stop_signal: signal.Signals) -> None:
    """SIGTERM/SIGINT to an idle worker (or pool) is a stop request, not a loop to restart: it exits 0 within
    seconds, every process gone and unregistered."""
    stack = api_stack
    processes = int(command[1]) if command else 1
    worker = stack.start_worker(*command)
    try:
        stack.wait_workers_ready(processes)
        members = worker.children() if command else [worker.pid]
        time.sleep(1.5)  # idle through a dequeue slice or two
        started = time.monotonic()
        worker.popen.send_signal(stop_signal)
        assert worker.popen.wait(timeout=8) == 0, worker.output()
        assert time.monotonic() - started < 5, worker.output()
        assert "restarting it" not in worker.output(), worker.output()
        assert not [pid for pid in members if Path(f"/proc/{pid}").exists()]
        client = Redis.from_url(stack.redis_url)
        try:
            assert not [w.name for w in Worker.all(connection=client) if w.pid in members]
        finally:
            client.close()
    finally:
        _stop_all(stack, [worker])


STOP_ROUNDS = 20


@pytest.mark.parametrize("command", [(), ("--processes", "2")], ids=["worker", "pool"])
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_a_worker_stops_within_seconds_every_time(api_stack: Stack, command: tuple[str, ...], busy: bool) -> None:
    """SIGTERM, :data:`STOP_ROUNDS` times in a row: each worker (or pool) exits 0 within 5 s, idle or running a
    generation (which it finishes first). A stop used to wait up to 60 s about one time in five, in RQ's
    unsubscription from its command channel."""
    stack = api_stack
    processes = int(command[1]) if command else 1
    user = stack.new_user(credits=100_000)
    for round_ in range(STOP_ROUNDS):
        worker = stack.start_worker(*command, POSEGEN_LOCAL_LATENCY="1")
        try:
            stack.wait_workers_ready(processes)
            generation_id = None
            if busy:
                generation_id = stack.create_generation(user, POSES[:1], prompt=f"stop {round_}").json()["generationId"]
                deadline = time.monotonic() + 20
                while _status(stack, user, generation_id) != "processing":
                    assert time.monotonic() < deadline, worker.output()
                    time.sleep(0.05)
            else:
                time.sleep(0.2 + 0.1 * (round_ % 5))  # a stop at various points of the idle dequeue slices
            started = time.monotonic()
            worker.popen.send_signal(signal.SIGTERM)
            try:
                code = worker.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"round {round_}: still running 5 s after SIGTERM\n"
                                     f"{stack.worker_stacks()}\n{worker.output()}") from None
            assert code == 0, f"round {round_}: exit {code}\n{worker.output()}"
            elapsed = time.monotonic() - started
            assert elapsed < 5, f"round {round_}: {elapsed:.1f} s"
            if generation_id is not None:  # a warm stop: the running generation was finished, not abandoned
                assert _status(stack, user, generation_id) == "completed", worker.output()
        finally:
            _stop_all(stack, [worker])


def test_a_worker_stopped_before_its_loop_runs_leaves_with_exit_0(api_stack: Stack) -> None:
    """SIGTERM before RQ's loop has installed its handlers (here: registering on a Redis that does not answer)
    is a stop request too: exit 0 within seconds, not Python's default for SIGTERM (exit -15). A CI run hit
    this when Redis went silent just after the worker appeared registered."""
    stack = api_stack
    url = urlsplit(stack.redis_url)
    proxy = TcpProxy((url.hostname or "127.0.0.1", url.port or 6379)).start()
    proxy.silence(new_connections=True)  # every Redis call of the worker waits for its socket timeout
    worker = stack.start_worker(REDIS_URL=urlunsplit(url._replace(netloc=f"127.0.0.1:{proxy.port}")))
    try:
        deadline = time.monotonic() + 30
        while not proxy.accepted_connections():  # its first Redis call now waits on a silent connection
            assert worker.alive() and time.monotonic() < deadline, worker.output()
            time.sleep(0.05)
        started = time.monotonic()
        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(timeout=10) == 0, worker.output()
        assert time.monotonic() - started < 5
    finally:
        proxy.stop()
        _stop_all(stack, [worker])


def _waiting_for_redis(output: str) -> bool:
    """The worker said it is waiting for Redis: our restart loop's line, or RQ's own dequeue retry."""
    return "Redis unreachable" in output or "could not connect to Redis" in output


@pytest.mark.parametrize("outage", ["refused", "silent"])
def test_a_worker_waiting_out_a_redis_outage_leaves_when_asked(api_stack: Stack, outage: str) -> None:
    """Redis goes away (connections reset and new ones refused, or every connection silent): the worker waits
    for it, and SIGTERM still stops it within seconds, exit 0, not a loop that restarts on every signal nor an
    unregistration that waits out the blocking-read timeout."""
    stack = api_stack
    url = urlsplit(stack.redis_url)
    proxy = TcpProxy((url.hostname or "127.0.0.1", url.port or 6379)).start()
    worker = stack.start_worker(REDIS_URL=urlunsplit(url._replace(netloc=f"127.0.0.1:{proxy.port}")))
    try:
        stack.wait_workers_ready(1)
        if outage == "refused":
            proxy.stop()
            deadline = time.monotonic() + 30
            while not _waiting_for_redis(worker.output()) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _waiting_for_redis(worker.output()), worker.output()
        else:
            proxy.silence(new_connections=True)
            time.sleep(3)  # blocked in a dequeue slice on a connection that no longer answers
        started = time.monotonic()
        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(timeout=10) == 0, worker.output()
        assert time.monotonic() - started < 5, worker.output()
        # No raw traceback: every line, RQ's own too, is a JSON entry of the seed's shape. (When Redis refuses
        # RQ outside its dequeue, RQ logs "found an unhandled exception" with the exception: an entry whose
        # error.stack holds it, as for any error entry.)
        for line in worker.output().splitlines():
            assert json.loads(line).keys() >= {"timestamp", "level", "component", "message", "metadata"}, line
    finally:
        proxy.stop()
        _stop_all(stack, [worker])


class _Listener:
    """What RQ's teardown uses of a worker's pub/sub thread."""

    def __init__(self) -> None:
        self.stopped = False

    def stop(self, timeout: float | None = None) -> None:
        self.stopped = True

    def join(self, timeout: float | None = None) -> None:
        pass

    def is_alive(self) -> bool:
        return not self.stopped


def test_a_worker_that_cannot_unregister_still_stops_its_command_listener(api_stack: Stack) -> None:
    """RQ's loop ended because Redis went away: the unregistration fails, and RQ's teardown then skipped the
    unsubscription, so the ended worker's pub/sub listener retried in the background for the life of the
    process, beside the listener of the worker that replaced it. It is stopped all the same."""
    from app.queue import make_queue
    from app.worker.loop import PoseWorker

    live = Redis.from_url(api_stack.redis_url)
    worker = PoseWorker([make_queue(live)], connection=live, name=f"teardown-{os.getpid()}")
    with socket.socket() as probe:  # a port nothing listens on: Redis gone
        probe.bind(("127.0.0.1", 0))
        gone_port = probe.getsockname()[1]
    worker.connection = Redis(port=gone_port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    listener = _Listener()
    worker.pubsub_thread = listener  # type: ignore[assignment]
    with pytest.raises(RedisConnectionError):  # the unregistration's error still ends the loop
        worker.teardown()
    assert listener.stopped and worker.pubsub_thread is None  # the thread closes its connection as it ends
    live.close()


def test_a_foreign_program_on_the_metrics_port_is_named_and_the_port_taken_over(api_stack: Stack) -> None:
    """Something that is not a posegen worker holds the metrics port: the worker says so in one line (not
    "served there by another worker"), keeps working, and serves the port once it frees."""
    stack = api_stack
    port = free_port()
    squatter = socket.create_server(("127.0.0.1", port))  # accepts, never answers HTTP
    worker = stack.start_worker(metrics_port=port)
    try:
        deadline = time.monotonic() + 30
        while f"Metrics port {port}" not in worker.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        told = [json.loads(line) for line in worker.output().splitlines() if f"Metrics port {port}" in line]
        assert len(told) == 1 and "does not answer as a posegen worker" in told[0]["message"], worker.output()
        assert told[0]["level"] == "ERROR"
        _run_generations(stack, 1)
        squatter.close()
        deadline = time.monotonic() + 30  # taken over within a takeover interval
        counts: dict[str, float] = {}
        while time.monotonic() < deadline and counts.get("pose_total") != 2:
            try:
                counts = worker_operation_counts(port)
            except httpx.HTTPError:
                time.sleep(0.5)
        assert counts.get("pose_total") == 2, (counts, worker.output())
        assert f"Took over metrics port {port}" in worker.output()
    finally:
        squatter.close()
        _stop_all(stack, [worker])
