"""Real stacks for tests: a database of their own, a Redis db of their own, API and worker processes.

Every stack gets a fresh PostgreSQL database cloned from a migrated and seeded
template (created by this run, and only those are dropped), and a database index
of a ``redis-server`` this run started itself, so stacks never see each other's
generations or jobs and no one else's data is ever touched. Processes are the real ``posegen`` commands.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app import API_PREFIX
from app.api.auth import Role, mint_token
from app.db.privileges import url_as_role

ROOT = Path(__file__).resolve().parent.parent
BASE_DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
JWT_SECRET = "test-secret-" + uuid.uuid4().hex


# The ports free_port has handed out in this process.
_ports_given: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and not one this process handed out before: the kernel may offer a port it
    just gave again (the failover drill's exporter and first API were given the same one, and the API lost)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    raise RuntimeError("the kernel offered only ports this process had handed out already")


def database_url(name: str) -> str:
    """BASE_DATABASE_URL with its database name replaced, kept in URL form."""
    parts = urlsplit(BASE_DATABASE_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(database_url("postgres"), autocommit=True)


def create_database(name: str, template: str | None = None) -> str:
    with _admin() as conn:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(statement)
    return database_url(name)


def drop_database(name: str) -> None:
    with _admin() as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


class PrivateRedis:
    """A ``redis-server`` this test run starts empty on a free port under a temp folder, stopped at exit.

    Tests and benchmarks never touch a Redis they did not start: the machine's (or a
    developer's) Redis at ``REDIS_URL`` is not used at all, so nothing of anyone else's
    can be flushed. Its 16 database indexes are handed to stacks one each.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._folder: Path | None = None
        self.port = 0
        self._free = list(range(16))

    def _start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: install the Debian package redis-server (make tools does)")
        self._folder = Path(tempfile.mkdtemp(prefix="posegen-test-redis-"))
        for _ in range(5):
            self.port = free_port()
            self._process = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                 "--dir", str(self._folder), "--logfile", str(self._folder / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while self._process.poll() is None and time.monotonic() < deadline:
                try:
                    if Redis(port=self.port, socket_timeout=1).ping():
                        atexit.register(self.stop)
                        return
                except RedisConnectionError:
                    time.sleep(0.05)
            self._process.kill()
            self._process.wait()
        raise RuntimeError(f"the test run's redis-server did not start; see {self._folder / 'redis.log'}")

    def claim(self) -> int:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            if not self._free:
                raise RuntimeError("all 16 databases of the test run's Redis are in use")
            return self._free.pop(0)

    def release(self, index: int) -> None:
        # This server was started empty by this run: every key in it is ours to delete. The server answering
        # on the port must be that process (its pid), never another Redis that took the port.
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                client = Redis(host="127.0.0.1", port=self.port, db=index)
                try:
                    if client.info("server").get("process_id") == self._process.pid:
                        client.flushdb()
                finally:
                    client.close()
            self._free.append(index)

    def url(self, index: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{index}"

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


TEST_REDIS = PrivateRedis()


def claim_redis_db() -> int:
    """A database index of the test run's own Redis (started on first use), empty, for one stack."""
    return TEST_REDIS.claim()


def release_redis_db(index: int) -> None:
    TEST_REDIS.release(index)


def redis_url(index: int) -> str:
    return TEST_REDIS.url(index)


def worker_operation_counts(port: int) -> dict[str, float]:
    """``pose_operation_duration_seconds_count`` by operation, scraped from the worker endpoint on ``port``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {sample.labels["operation"]: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "pose_operation_duration_seconds_count"}


def child_pids(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


class Process:
    """A ``posegen`` subprocess whose output goes to a log file (shown when a test fails)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, wrapper: tuple[str, ...] = ()) -> None:
        """``wrapper``: a command that execs the rest in place (``ip netns exec NAME``), so ``pid`` stays the
        ``posegen`` process's."""
        self.args = args
        self.metrics_port = 0
        self.worker_name = ""  # the --name of a worker the stack started
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process and its children (a worker's work-horse runs in a process group of its own)."""
        if self.alive():
            for pid in [*child_pids(self.popen.pid), self.popen.pid]:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        self.popen.wait(timeout=20)

    def children(self) -> list[int]:
        return child_pids(self.popen.pid)

    def stop(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class Stack:
    def __init__(self, name: str, template: str, tmp: Path, env: dict[str, str]) -> None:
        self.name = name
        self.db_name = f"{template}_{name}"[:63]
        self.database_url = create_database(self.db_name, template)
        self.redis_index = claim_redis_db()
        self.redis_url = redis_url(self.redis_index)
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "JWT_SECRET": JWT_SECRET,
            "POSEGEN_DATA_DIR": str(tmp / "data"),
            "POSEGEN_LEASE_SECONDS": "3",
            "POSEGEN_REAPER_INTERVAL_SECONDS": "0.5",
            "POSEGEN_RATE_LIMIT_PER_MINUTE": "100000",
            "POSEGEN_INVALID_CREATE_LIMIT_PER_MINUTE": "100000",
            "POSEGEN_READ_LIMIT_PER_MINUTE": "10000000",
            "POSEGEN_CALLER_CONCURRENCY": "0",
            "POSEGEN_QUEUED_CHECK_SECONDS": "5",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.api: Process | None = None
        self.workers: list[Process] = []
        self._started_workers = 0
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=f"{self.base_url}{API_PREFIX}", timeout=30)

    def start_api(self) -> Process:
        self.api = Process(["api", "--port", str(self.port)], self.env, self.tmp / "api.log")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.http.get("/health", timeout=2).status_code in (200, 503):
                    return self.api
            except httpx.HTTPError:
                pass
            if not self.api.alive():
                raise RuntimeError(f"API exited:\n{self.api.output()}")
            time.sleep(0.1)
        raise RuntimeError(f"API did not start:\n{self.api.output()}")

    def start_worker(self, *args: str, metrics_port: int | None = None, **env: str) -> Process:
        """``posegen worker`` with extra ``args`` (``"--processes", "3"``), on a free metrics port unless given."""
        self._started_workers += 1  # not len(self.workers): stopped ones leave it, and logs must not be shared
        index = self._started_workers
        metrics_port = metrics_port or free_port()
        name = f"{self.name}-w{index}-{uuid.uuid4().hex[:6]}"
        process = Process(["worker", "--name", name, "--metrics-port", str(metrics_port), *args],
                          {**self.env, **env}, self.tmp / f"worker-{index}.log")
        process.metrics_port = metrics_port
        process.worker_name = name  # a pool's members and a restarted worker register under names starting so
        self.workers.append(process)
        return process

    def wait_workers_ready(self, count: int, timeout: float = 60) -> None:
        """Until ``count`` workers of the processes this stack runs are registered on the queue (started, cache
        warm, listening). The registration of a killed worker lingers until its TTL, so only the names of
        running processes count."""
        from rq import Worker

        from app import QUEUE_NAME

        client = Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout

        def ready() -> int:
            names = tuple(w.worker_name for w in self.workers if w.worker_name and w.alive())
            return sum(1 for worker in Worker.all(connection=client) if names and worker.name.startswith(names))

        try:
            while ready() < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {ready()} of {count} workers ready on {QUEUE_NAME}")
                time.sleep(0.1)
        finally:
            client.close()

    def token(self, user_id: str, role: Role = Role.USER, ttl: int = 3600) -> str:
        return mint_token(JWT_SECRET, user_id, role, ttl)

    def headers(self, user_id: str, role: Role = Role.USER) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user_id, role)}"}

    def new_user(self, credits: int = 0) -> str:
        user_id = f"user_{uuid.uuid4().hex[:10]}"
        if credits:
            answer = self.http.post("/credits/grants", json={"userId": user_id, "amount": credits},
                                    headers=self.headers("admin", Role.ADMIN))
            assert answer.status_code == 201, answer.text
        return user_id

    def create_generation(self, user_id: str, pose_ids: list[str], prompt: str = "a portrait",
                          **kwargs: Any) -> httpx.Response:
        return self.http.post("/generations", json={"poseIds": pose_ids, "prompt": prompt},
                              headers={**self.headers(user_id), **kwargs.pop("headers", {})}, **kwargs)

    def wait_finished(self, user_id: str, generation_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            answer = self.http.get(f"/generations/{generation_id}", headers=self.headers(user_id))
            assert answer.status_code == 200, answer.text
            body = answer.json()
            if body["status"] in ("completed", "failed"):
                return body
            time.sleep(0.1)
        raise AssertionError(f"generation {generation_id} not finished within {timeout} s: {body}\n"
                             + self.logs() + self.worker_stacks())

    def create_until_partly_failed(self, user_id: str, pose_ids: list[str], tries: int = 12) -> dict[str, int]:
        """With a worker injecting failures into some poses (``POSEGEN_FAULTS=FLUX_API_ERROR=0.5``), create
        generations one at a time until one ends ``completed`` with failed poses; each one's id and how many of
        its poses failed, the partly failed one last."""
        failed_poses: dict[str, int] = {}
        for attempt in range(tries):
            generation_id = self.create_generation(user_id, pose_ids, prompt=f"flaky {attempt}").json()["generationId"]
            view = self.wait_finished(user_id, generation_id)
            failed_poses[generation_id] = sum(pose["status"] == "failed" for pose in view["poses"])
            if view["status"] == "completed" and failed_poses[generation_id]:
                return failed_poses
        raise AssertionError(f"no partly failed generation in {tries}: {failed_poses}")

    def work_horse_peak_memory_mb(self, generation_id: str, worker: int = 0, timeout: float = 30) -> float:
        """The peak resident memory of the work-horse that ran ``generation_id`` on ``self.workers[worker]``: its
        ``Work-horse finished`` line, the kernel's ``ru_maxrss`` of the horse read when the worker reaped it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.workers[worker].output().splitlines():
                if line.startswith("{") and '"Work-horse finished"' in line:
                    metadata = json.loads(line)["metadata"]
                    if str(metadata.get("jobId", "")).startswith(f"{generation_id}-"):
                        return float(metadata["peakMemoryMb"])
            time.sleep(0.1)
        raise AssertionError(f"no Work-horse finished line for {generation_id}\n{self.logs()}")

    def worker_stacks(self) -> str:
        """py-spy dumps of every running worker process and its children (work-horses, pool members)."""
        parts = []
        for process in self.workers:
            if not process.alive():
                continue
            for pid in [process.popen.pid, *child_pids(process.popen.pid)]:
                dump = subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(pid)],
                                      capture_output=True, text=True, timeout=30)
                parts.append(f"--- py-spy dump of {pid} ({process.log_path.name}) ---\n{dump.stdout}{dump.stderr}")
        return "\n".join(parts)

    def balance(self, user_id: str) -> int:
        answer = self.http.get("/credits", headers=self.headers(user_id))
        assert answer.status_code == 200, answer.text
        return int(answer.json()["balance"])

    def db(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url, autocommit=True)

    def logs(self) -> str:
        parts = []
        for process in [self.api, *self.workers]:
            if process is not None:
                parts.append(f"--- {process.log_path.name} (tail) ---\n{process.output()[-4000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for process in [*self.workers, self.api]:
            if process is not None:
                process.stop()
        self.http.close()
        release_redis_db(self.redis_index)
        drop_database(self.db_name)


def prepare_database(url: str) -> None:
    """Migrate and seed the pose library, as `posegen migrate` and `posegen seed` do."""
    from app.db.migrate import migrate
    from app.domain.poses import seed_pose_library

    migrate(url)

    async def seed() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await seed_pose_library(conn)

    asyncio.run(seed())


def build_template() -> str:
    """A migrated, seeded database that stacks clone."""
    name = f"posegen_test_{uuid.uuid4().hex[:8]}"
    prepare_database(create_database(name))
    return name


@contextmanager
def running_stack(template: str, tmp: Path, *, workers: int = 1, api: bool = True, database_role: str | None = None,
                  **env: str) -> Iterator[Stack]:
    """A stack on a clone of ``template``; with ``database_role`` its processes connect as that role (the test's
    own connections, :meth:`Stack.db`, stay the owner's)."""
    stack = Stack(uuid.uuid4().hex[:8], template, tmp, env)
    try:
        if database_role:
            stack.env["DATABASE_URL"] = url_as_role(stack.database_url, database_role)
        if api:
            stack.start_api()
        for _ in range(workers):
            stack.start_worker()
        yield stack
    finally:
        stack.close()


def check_ledger_invariants(conn: psycopg.Connection[Any]) -> None:
    """Per user: balance = grants - charges + refunds, never negative. Per pose and run (a retried pose runs
    again): a refund only of a failed outcome, exactly one for each failed run the user paid for, none
    for a run on the house. Per generation: creditsCharged and creditsRefunded agree with the ledger."""
    rows = conn.execute(
        "SELECT a.user_id, a.balance,"
        " coalesce(sum(l.amount) FILTER (WHERE l.kind = 'grant'), 0)"
        " - coalesce(sum(l.amount) FILTER (WHERE l.kind = 'charge'), 0)"
        " + coalesce(sum(l.amount) FILTER (WHERE l.kind = 'refund'), 0)"
        " FROM credit_accounts a LEFT JOIN credit_ledger l USING (user_id) GROUP BY a.user_id, a.balance"
    ).fetchall()
    for user_id, balance, derived in rows:
        assert balance >= 0, f"{user_id} balance negative: {balance}"
        assert balance == derived, f"{user_id}: balance {balance} != ledger {derived}"
    # Every pose outcome: the current one of each pose, and those archived when it was retried.
    outcomes = ("(SELECT id AS pose, run, status, run_charged AS charged FROM generation_poses"
                " UNION ALL SELECT generation_pose_id, run, status, charged FROM generation_pose_attempts)")
    bad = conn.execute(
        f"SELECT l.id FROM credit_ledger l LEFT JOIN {outcomes} o ON o.pose = l.generation_pose_id AND o.run = l.run"
        " WHERE l.kind = 'refund' AND (o.status IS DISTINCT FROM 'failed' OR NOT o.charged)"
    ).fetchall()
    assert not bad, f"refunds of poses that did not fail (or were not paid for): {bad}"
    unrefunded = conn.execute(
        f"SELECT o.pose, o.run FROM {outcomes} o LEFT JOIN credit_ledger l"
        " ON l.generation_pose_id = o.pose AND l.run = o.run AND l.kind = 'refund'"
        " WHERE o.status = 'failed' AND o.charged AND l.id IS NULL"
    ).fetchall()
    assert not unrefunded, f"failed poses without a refund: {unrefunded}"
    mismatch = conn.execute(
        "SELECT g.id FROM generations g LEFT JOIN credit_ledger l ON l.generation_id = g.id"
        " GROUP BY g.id, g.credits_refunded, g.credits_charged"
        " HAVING g.credits_refunded <> coalesce(sum(l.amount) FILTER (WHERE l.kind = 'refund'), 0)"
        " OR g.credits_charged <> coalesce(sum(l.amount) FILTER (WHERE l.kind = 'charge'), 0)"
    ).fetchall()
    assert not mismatch, f"generations whose credits disagree with the ledger: {mismatch}"
