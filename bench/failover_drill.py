"""A failover drill with real servers: lose the Redis master, then the PostgreSQL primary, under load.

Starts on free ports a Redis master + replica + three Sentinels and a PostgreSQL primary + synchronous streaming
standby (``tests/replication.py``), then two API processes, two workers and the exporter configured with
``REDIS_SENTINELS``/``REDIS_SENTINEL_MASTER`` and a multi-host ``DATABASE_URL`` (``target_session_attrs=
read-write``). Client threads create generations and poll them throughout. The drill SIGKILLs the Redis master
(Sentinel promotes the replica), waits for service to come back, then stops the PostgreSQL primary
(``pg_ctl stop -m immediate``) and promotes the standby (``pg_ctl promote``) after :data:`PROMOTE_DELAY_SECONDS`
(the time an operator or an orchestrator takes to decide). Afterwards it waits until every generation is
terminal and reads the outcome: every answer's status, the time without service of each failover, the
ledger and the exporter's counters.

Time without service (``outage_seconds``) = from the fault, or from the first request that failed with it when
that one was already in flight, to the first successful create begun after the fault;
``fault_to_first_create_seconds`` counts from the fault itself.

    python -m bench.failover_drill          # prints a table (needs redis-server and PostgreSQL 15 binaries)
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app import API_PREFIX
from app.api.auth import Role, mint_token
from tests.replication import SENTINEL_MASTER, SentinelRedis, StreamingPostgres
from tests.stack import JWT_SECRET, Process, check_ledger_invariants, free_port, prepare_database

POSES = ["pose_tree_pose", "pose_arms_crossed"]
CLIENT_THREADS = 4
CREATE_INTERVAL_SECONDS = 1.5  # per client thread: about 2.7 creates per second in all
STEADY_SECONDS = 3.0
PROMOTE_DELAY_SECONDS = 4.0
RECOVERY_TIMEOUT_SECONDS = 60.0
SETTLE_TIMEOUT_SECONDS = 120.0


@dataclass
class Answer:
    """One request of the load: when it began and ended (monotonic seconds), what, and its status (0: no
    HTTP answer; ``error`` says why)."""

    began: float
    ended: float
    what: str
    status: int
    error: str = ""


@dataclass
class Failover:
    name: str
    fault_at: float
    first_failure_at: float | None = None
    first_success_at: float | None = None
    failed_requests: int = 0

    @property
    def outage_seconds(self) -> float:
        """Time without service: from the fault, or the first request that failed with it if that one began
        earlier (in flight at the fault), to the end of the first create begun after the fault that succeeded.
        Requests that hung through the outage count as well as those that failed."""
        if self.first_success_at is None:
            return float("inf")
        return self.first_success_at - min(self.fault_at, self.first_failure_at or self.fault_at)

    @property
    def fault_to_first_create_seconds(self) -> float:
        return (self.first_success_at or self.fault_at) - self.fault_at


@dataclass
class DrillResult:
    failovers: list[Failover]
    answers: list[Answer]
    generations: dict[str, int] = field(default_factory=dict)  # status -> count
    statuses: Counter[int] = field(default_factory=Counter)
    health_while_no_primary: list[int] = field(default_factory=list)
    health_around_promotion: list[tuple[float, float, int]] = field(default_factory=list)
    standby_health: tuple[int, str] = (0, "")  # /health of an API whose DATABASE_URL names only the standby
    workers_stopped_by_command: bool = False  # RQ's shutdown command, over pub/sub after the failover, worked
    sources_down: dict[str, int] = field(default_factory=dict)  # exporter scrapes (1 s apart) with the source down
    exporter: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    ledger_problems: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds each part of the drill took
    logs: str = ""


class Load:
    """Client threads creating generations (each its own user) and polling them, on both APIs in turn."""

    def __init__(self, api_urls: list[str], users: list[str]) -> None:
        self.api_urls = api_urls
        self.users = users
        self.answers: list[Answer] = []
        self.created: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(u,), daemon=True) for u in users]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _call(self, client: httpx.Client, what: str, method: str, url: str, **kwargs: Any) -> httpx.Response | None:
        began = time.monotonic()
        try:
            answer = client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            with self._lock:
                self.answers.append(Answer(began, time.monotonic(), what, 0, f"{type(exc).__name__}: {exc}"))
            return None
        with self._lock:
            self.answers.append(Answer(began, time.monotonic(), what, answer.status_code))
        return answer

    def _run(self, user: str) -> None:
        headers = {"Authorization": f"Bearer {mint_token(JWT_SECRET, user, Role.USER, 3600)}"}
        rng = random.Random(user)
        mine: list[str] = []
        with httpx.Client(timeout=30, headers=headers) as client:
            while not self._stop.is_set():
                base = rng.choice(self.api_urls)
                answer = self._call(client, "create", "POST", f"{base}{API_PREFIX}/generations",
                                    json={"poseIds": POSES, "prompt": "a failover drill"})
                if answer is not None and answer.status_code == 202:
                    mine.append(answer.json()["generationId"])
                    with self._lock:
                        self.created.append(mine[-1])
                # Then polls until the next create: a steady rate the two workers keep up with, so what the
                # drill measures is the failovers, not a backlog.
                next_create = time.monotonic() + CREATE_INTERVAL_SECONDS
                while time.monotonic() < next_create and not self._stop.is_set():
                    for generation_id in mine[-2:]:
                        self._call(client, "poll", "GET", f"{rng.choice(self.api_urls)}{API_PREFIX}/generations/"
                                   f"{generation_id}")
                    self._stop.wait(0.2)

    def creates_since(self, moment: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.what == "create" and a.began >= moment]


def _wait_recovered(load: Load, failover: Failover, timeout: float = RECOVERY_TIMEOUT_SECONDS) -> None:
    """Until a create that began after the fault (and after its first failure, if any) succeeded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with load._lock:  # failed requests that ended after the fault: those in flight at it count too
            failures = [a for a in load.answers if a.ended >= failover.fault_at and a.status not in range(200, 500)]
            creates = [a for a in load.answers if a.what == "create" and a.status == 202]
        failover.failed_requests = len(failures)
        failover.first_failure_at = min((a.began for a in failures), default=None)
        since = min(failover.fault_at, failover.first_failure_at or failover.fault_at)
        successes = [a.ended for a in creates if a.began >= max(since, failover.fault_at)]
        if successes:
            failover.first_success_at = min(successes)
            return
        time.sleep(0.1)
    raise AssertionError(f"{failover.name}: no successful create within {timeout} s of the fault")


def _scrape(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=10).text
    figures: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            figures[f"{sample.name}{{{labels}}}"] = sample.value
    return figures


def _rows(conn: psycopg.Connection[Any]) -> dict[str, int]:
    created, completed, failed, queued, processing = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),"
        " count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = 'processing') FROM generations"
    ).fetchone()
    charged, refunded = conn.execute(
        "SELECT coalesce(sum(amount) FILTER (WHERE kind = 'charge'), 0),"
        " coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0) FROM credit_ledger").fetchone()
    return {"created": created, "completed": completed, "failed": failed, "queued": queued,
            "processing": processing, "charged": int(charged), "refunded": int(refunded)}


def ledger_problems(conn: psycopg.Connection[Any]) -> list[str]:
    """What is wrong with the books: :func:`tests.stack.check_ledger_invariants` (balances equal ledgers, a
    refund for each failed paid run and only for those), plus each generation charged exactly once and no pose
    run refunded twice. Empty when all is well."""
    problems = []
    try:
        check_ledger_invariants(conn)
    except AssertionError as exc:
        problems.append(str(exc))
    charges = conn.execute(
        "SELECT g.id, count(l.id) FROM generations g LEFT JOIN credit_ledger l ON l.generation_id = g.id"
        " AND l.kind = 'charge' GROUP BY g.id HAVING count(l.id) <> 1").fetchall()
    if charges:
        problems.append(f"generations not charged exactly once: {charges[:5]}")
    refunds = conn.execute(
        "SELECT generation_pose_id, run, count(*) FROM credit_ledger WHERE kind = 'refund'"
        " GROUP BY generation_pose_id, run HAVING count(*) > 1").fetchall()
    if refunds:
        problems.append(f"pose runs refunded more than once: {refunds[:5]}")
    return problems


def exporter_matches_rows(figures: dict[str, float], rows: dict[str, int]) -> bool:
    """The exporter's counters equal the database's rows."""
    return (figures.get("pose_generations_total{status=created}") == rows["created"]
            and figures.get("pose_generations_total{status=completed}") == rows["completed"]
            and figures.get("pose_generations_total{status=failed}") == rows["failed"]
            and figures.get("pose_credits_spent_total{}") == rows["charged"]
            and figures.get("pose_credits_refunded_total{}") == rows["refunded"])


def run_drill(folder: Path) -> DrillResult:
    """The whole drill in ``folder`` (process logs); raises AssertionError when service does not come back."""
    redis, postgres = SentinelRedis(), StreamingPostgres()
    processes: list[Process] = []
    phases: dict[str, float] = {}
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        phases[name] = time.monotonic() - mark
        mark = time.monotonic()

    try:
        redis.start()
        postgres.start()
        postgres.create_database("posegen")
        database_url = postgres.url("posegen")
        phase("servers")
        prepare_database(database_url)
        phase("migrate")
        env = {
            **os.environ, "DATABASE_URL": database_url,
            # The host is never used with Sentinel (and resolves nowhere, so a fallback to it would show).
            "REDIS_URL": "redis://redis-master.invalid:6379/0", "REDIS_SENTINELS": redis.sentinel_setting,
            "REDIS_SENTINEL_MASTER": SENTINEL_MASTER, "JWT_SECRET": JWT_SECRET,
            "POSEGEN_DATA_DIR": str(folder / "data"), "POSEGEN_LEASE_SECONDS": "3",
            "POSEGEN_REAPER_INTERVAL_SECONDS": "0.5", "POSEGEN_QUEUED_CHECK_SECONDS": "5",
            "POSEGEN_RATE_LIMIT_PER_MINUTE": "100000", "POSEGEN_INVALID_CREATE_LIMIT_PER_MINUTE": "100000",
            "POSEGEN_READ_LIMIT_PER_MINUTE": "10000000", "POSEGEN_CALLER_CONCURRENCY": "0",
            "POSEGEN_LOCAL_LATENCY": "0.05-0.15", "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
        }
        api_ports = [free_port(), free_port()]
        for index, port in enumerate(api_ports):
            processes.append(Process(["api", "--port", str(port)], env, folder / f"api-{index}.log"))
        for index in range(2):
            processes.append(Process(["worker", "--name", f"drill-w{index}-{uuid.uuid4().hex[:6]}", "--metrics-port",
                                      str(free_port())], env, folder / f"worker-{index}.log"))
        exporter_port = free_port()
        processes.append(Process(["exporter", "--port", str(exporter_port)], env, folder / "exporter.log"))
        exporter_url = f"http://127.0.0.1:{exporter_port}/metrics"
        api_urls = [f"http://127.0.0.1:{port}" for port in api_ports]
        admin = {"Authorization": f"Bearer {mint_token(JWT_SECRET, 'admin', Role.ADMIN, 3600)}"}
        deadline = time.monotonic() + 60
        for url in api_urls:
            while True:
                try:
                    if httpx.get(f"{url}{API_PREFIX}/health", timeout=3).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("the APIs did not become healthy:\n" + _logs(processes))
                time.sleep(0.2)
        result_standby = _standby_readiness(env, postgres, folder)
        phase("processes")
        users = [f"drill_{uuid.uuid4().hex[:8]}" for _ in range(CLIENT_THREADS)]
        for user in users:
            granted = httpx.post(f"{api_urls[0]}{API_PREFIX}/credits/grants",
                                 json={"userId": user, "amount": 1_000_000}, headers=admin, timeout=10)
            assert granted.status_code == 201, granted.text
        load = Load(api_urls, users)
        health: list[tuple[float, float, int]] = []
        health_stop = threading.Event()

        def watch_health(url: str) -> None:
            while not health_stop.is_set():
                began = time.monotonic()
                try:
                    status = httpx.get(f"{url}{API_PREFIX}/health", timeout=5).status_code
                except httpx.HTTPError:
                    status = 0
                health.append((began, time.monotonic(), status))
                health_stop.wait(0.1)

        scrapes: list[tuple[float, dict[str, float]]] = []

        def scrape_exporter() -> None:  # as Prometheus does: the exporter reads its sources when scraped
            while not health_stop.is_set():
                try:
                    scrapes.append((time.monotonic(), _scrape(exporter_url)))
                except httpx.HTTPError:
                    pass
                health_stop.wait(1.0)

        watchers = [threading.Thread(target=watch_health, args=(url,), daemon=True) for url in api_urls]
        watchers.append(threading.Thread(target=scrape_exporter, daemon=True))
        load.start()
        for watcher in watchers:
            watcher.start()
        time.sleep(STEADY_SECONDS)

        redis.kill_master()  # returns once the process is gone: requests from now on meet the failover
        redis_failover = Failover("Redis master SIGKILLed (Sentinel failover)", time.monotonic())
        _wait_recovered(load, redis_failover)
        time.sleep(STEADY_SECONDS)

        postgres.stop_primary()  # pg_ctl waits until the server is gone
        stopped_at = time.monotonic()
        pg_failover = Failover("PostgreSQL primary stopped, standby promoted", stopped_at)
        time.sleep(PROMOTE_DELAY_SECONDS)
        promote_began = time.monotonic()
        postgres.promote_standby()
        _wait_recovered(load, pg_failover)
        time.sleep(STEADY_SECONDS)
        load.stop()
        phase("load and failovers")
        health_stop.set()
        for watcher in watchers:
            watcher.join(timeout=30)

        result = DrillResult([redis_failover, pg_failover], list(load.answers))
        result.standby_health = result_standby
        result.statuses = Counter(a.status for a in result.answers)
        result.sources_down = {source: sum(1 for _, f in scrapes if f.get(f"pose_exporter_up{{source={source}}}") == 0)
                               for source in ("redis", "postgres")}
        result.health_around_promotion = [(round(b - stopped_at, 2), round(e - stopped_at, 2), s)
                                          for b, e, s in health if stopped_at - 2 <= b <= promote_began + 5]
        result.health_while_no_primary = [status for began, ended, status in health
                                          if began >= stopped_at and ended <= promote_began]
        with psycopg.connect(database_url, autocommit=True) as conn:
            settle = time.monotonic() + SETTLE_TIMEOUT_SECONDS
            while True:
                result.rows = _rows(conn)
                if not (result.rows["queued"] or result.rows["processing"]) or time.monotonic() > settle:
                    break
                time.sleep(0.5)
            result.generations = {status: count for status, count in conn.execute(
                "SELECT status, count(*) FROM generations GROUP BY status")}
            result.ledger_problems = ledger_problems(conn)
        phase("settle")
        deadline = time.monotonic() + 30
        while True:
            result.exporter = _scrape(exporter_url)
            if exporter_matches_rows(result.exporter, result.rows) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        phase("exporter")
        result.workers_stopped_by_command = _stop_workers_by_command(env, [p for p in processes
                                                                          if p.args[0] == "worker"])
        phase("workers' command channel")
        result.phases = phases
        result.logs = _logs(processes)
        return result
    finally:
        for process in processes:
            process.stop()
        redis.stop()
        postgres.stop()


def _standby_readiness(env: dict[str, str], postgres: StreamingPostgres, folder: Path) -> tuple[int, str]:
    """``/health`` of an API process whose ``DATABASE_URL`` names the standby alone (no
    ``target_session_attrs``): its status and ``checks.database.error``. A standby takes no writes, so it
    must not be ready (503, ``ReadOnlyDatabase``)."""
    port = free_port()
    standby_url = f"postgresql://postgres@127.0.0.1:{postgres.ports['standby']}/posegen"
    api = Process(["api", "--port", str(port)], {**env, "DATABASE_URL": standby_url}, folder / "api-standby.log")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}{API_PREFIX}/health", timeout=5)
                return answer.status_code, answer.json()["checks"]["database"].get("error", "")
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"the standby's API did not answer:\n{api.output()}")
    finally:
        api.stop()


def _stop_workers_by_command(env: dict[str, str], workers: list[Process], timeout: float = 30) -> bool:
    """Send RQ's shutdown command (a PUBLISH on each registered worker's channel) through Sentinel and wait
    for the worker processes to exit: their pub/sub listeners work on the new master."""
    from redis.exceptions import RedisError
    from rq import Worker
    from rq.command import send_shutdown_command

    from app.connections import redis_client
    from app.settings import Settings

    settings = Settings.from_env(env)
    client = redis_client(settings.redis_url, sentinel=settings.redis_sentinel)
    deadline = time.monotonic() + timeout
    sent_at = 0.0
    try:
        # A PUBLISH reaches only the listeners subscribed at that moment: a worker still restarting its loop after
        # the failover (re-registering, re-subscribing) hears the next one, sent every few seconds.
        while any(w.alive() for w in workers) and time.monotonic() < deadline:
            if time.monotonic() - sent_at >= 3:
                sent_at = time.monotonic()
                try:
                    for worker in Worker.all(connection=client):
                        send_shutdown_command(client, worker.name)
                except RedisError:
                    pass  # the next round tries again
            time.sleep(0.1)
    finally:
        client.close()
    return not any(w.alive() for w in workers)


def _logs(processes: list[Process]) -> str:
    return "\n".join(f"--- {p.log_path.name} (tail) ---\n{p.output()[-3000:]}" for p in processes)


def table(result: DrillResult) -> str:
    """The drill's figures, one line each."""
    lines = [f"{'failover':<48} {'no service, s':>14} {'fault to 1st create, s':>23} {'failed requests':>16}"]
    for failover in result.failovers:
        lines.append(f"{failover.name:<48} {failover.outage_seconds:>14.2f} "
                     f"{failover.fault_to_first_create_seconds:>23.2f} {failover.failed_requests:>16}")
    lines.append(f"answers by status: {dict(sorted(result.statuses.items()))}")
    lines.append(f"generations by status: {result.generations}")
    lines.append(f"/health of an API on the standby alone: {result.standby_health}")
    lines.append(f"workers stopped by RQ's shutdown command after the failovers: {result.workers_stopped_by_command}")
    lines.append(f"exporter scrapes with a source down (1 s apart): {result.sources_down}")
    lines.append("drill phases, s: " + ", ".join(f"{k} {v:.1f}" for k, v in result.phases.items()))
    lines.append(f"ledger: {'; '.join(result.ledger_problems) or 'balanced, each generation charged once'}")
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    with tempfile.TemporaryDirectory(prefix="posegen-failover-drill-") as folder:
        result = run_drill(Path(folder))
    print(table(result))


if __name__ == "__main__":
    main()
