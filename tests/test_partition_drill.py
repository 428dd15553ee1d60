"""Network-partition drill: workers on two hosts (network namespaces), one cut off mid-generation.

Hosts ``w1`` and ``w2`` run a worker each, host ``api`` the API; Redis (a server of this test's own) and
PostgreSQL (the test's private database, through a TCP forwarder on each host's gateway address) are in the root
namespace, reached over the veth pairs. The worker holding a generation is partitioned with iptables DROP:
its connections hang silently. Its lease lapses, the other host's reaper re-queues the generation under
attempt 2 and that host runs it. Then the partition heals and what the cut-off work-horse sent or sends
reaches the database late: its lease renewal, its pose results and refunds, its finish. Each is refused
because attempt 1 is fenced. The heal comes as soon as the reaper has re-queued, while attempt 2 runs: its
poses are still pending then, so only the attempt check refuses attempt 1's results (healing after attempt 2's
finish would leave them to the pose status alone, and the horse's in-flight statements would likely run into
their 10 s bound and abandon the attempt instead of writing late). Afterwards: one completion, one charge
per pose, one refund per failed pose of attempt 2, balances equal to the ledger, the re-queue counted by the
exporter, and the healed worker takes new work. Takes about 40 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from redis import Redis
from redis.exceptions import RedisError
from rq import Worker

from app import API_PREFIX
from app.api.auth import Role, mint_token
from app.errors import ErrorType
from app.observability.fleet_metrics import PROVIDER_SLOT_WAIT
from app.worker.faults import FaultPlan
from tests import netns
from tests.fakes.tcp_proxy import TcpProxy
from tests.stack import (
    BASE_DATABASE_URL,
    JWT_SECRET,
    Process,
    check_ledger_invariants,
    child_pids,
    create_database,
    database_url,
    drop_database,
    free_port,
)
from tests.support.worker_recovery import scrape_exporter_once

pytestmark = pytest.mark.drill

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]
PRICE = 30
# Half the poses of an attempt fail at the upload, after the provider's latency: attempt 1's failures come
# while it is cut off or after the heal, so their refunds are late writes too. The plan is a hash of
# (generation, position, attempt): what each attempt does is known in advance.
FAULTS = {ErrorType.STORAGE_ERROR: 0.5}
LATENCY_SECONDS = 5
LEASE_SECONDS = 3


@dataclass
class Drill:
    """The partition drill's processes and how to reach them from the root namespace."""

    net: netns.HostNetwork
    tmp: Path
    db_name: str
    database_url: str
    redis_port: int
    env: dict[str, str]
    api_url: str = ""
    processes: list[Process] = field(default_factory=list)
    workers: dict[str, Process] = field(default_factory=dict)

    def host_env(self, host: str, proxy_port: int) -> dict[str, str]:
        """The environment of a process on ``host``: Redis and PostgreSQL at that host's gateway address."""
        gateway = self.net.hosts[host].gateway
        return {**self.env, "REDIS_URL": f"redis://{gateway}:{self.redis_port}/0",
                "DATABASE_URL": f"postgresql://postgres@{gateway}:{proxy_port}/{self.db_name}"}

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=f"{self.api_url}{API_PREFIX}", timeout=30)

    def headers(self, user: str, role: Role = Role.USER) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(JWT_SECRET, user, role)}"}

    def db(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url, autocommit=True)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name} (tail) ---\n{p.output()[-6000:]}" for p in self.processes)


def _start_redis(folder: Path, addresses: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server of this test's own, listening on 127.0.0.1 and ``addresses``, empty, no persistence."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server not found (make tools installs it)"
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen(
            # Protected mode refuses every client not on loopback when no password is set; the veth addresses
            # bound here are reachable from this machine's namespaces only.
            [binary, "--bind", "127.0.0.1", *addresses, "--protected-mode", "no", "--port", str(port),
             "--save", "", "--appendonly", "no",
             "--dir", str(folder), "--logfile", str(folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            try:
                client = Redis(port=port, socket_timeout=1)
                if client.info("server")["process_id"] == process.pid:
                    client.close()
                    return process, port
            except RedisError:
                time.sleep(0.05)
        process.kill()
        process.wait()
    raise RuntimeError(f"the drill's redis-server did not start; see {folder / 'redis.log'}")


@pytest.fixture
def drill(template_db: str, tmp_path: Path) -> Iterator[Drill]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"partition drill skipped: {reason}")
    upstream = urlsplit(BASE_DATABASE_URL)
    db_name = f"{template_db}_netns_{uuid.uuid4().hex[:6]}"
    redis_folder = Path(tempfile.mkdtemp(prefix="posegen-netns-redis-"))
    proxies: list[TcpProxy] = []
    redis_process: subprocess.Popen[bytes] | None = None
    drill: Drill | None = None
    with netns.HostNetwork(["w1", "w2", "api"], rto_max_ms=1000) as net:
        try:
            create_database(db_name, template_db)
            redis_process, redis_port = _start_redis(redis_folder, [h.gateway for h in net.hosts.values()])
            env = {
                "JWT_SECRET": JWT_SECRET, "POSEGEN_DATA_DIR": str(tmp_path / "data"),
                "POSEGEN_LEASE_SECONDS": str(LEASE_SECONDS), "POSEGEN_REAPER_INTERVAL_SECONDS": "0.5",
                "POSEGEN_QUEUED_CHECK_SECONDS": "5", "POSEGEN_LOCAL_LATENCY": str(LATENCY_SECONDS),
                "POSEGEN_FAULTS": ",".join(f"{k.value}={v}" for k, v in FAULTS.items()),
                "POSEGEN_RATE_LIMIT_PER_MINUTE": "100000", "POSEGEN_READ_LIMIT_PER_MINUTE": "10000000",
                "POSEGEN_CALLER_CONCURRENCY": "0", "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
            }
            base_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
            drill = Drill(net, tmp_path, db_name, database_url(db_name), redis_port, {**base_env, **env})
            ports = {}
            for name, host in net.hosts.items():
                proxy = TcpProxy((upstream.hostname or "127.0.0.1", upstream.port or 5432), host=host.gateway)
                proxies.append(proxy.start())
                ports[name] = proxy.port
            api_host = net.hosts["api"]
            api_port = 8000  # the namespace is new: nothing else listens in it
            api = Process(["api", "--host", api_host.address, "--port", str(api_port)],
                          drill.host_env("api", ports["api"]), tmp_path / "api.log", wrapper=api_host.exec_prefix())
            drill.processes.append(api)
            drill.api_url = f"http://{api_host.address}:{api_port}"
            for name in ("w1", "w2"):
                host = net.hosts[name]
                worker = Process(["worker", "--name", f"netns-{name}-{uuid.uuid4().hex[:6]}",
                                  "--metrics-host", host.address, "--metrics-port", "9109"],
                                 drill.host_env(name, ports[name]), tmp_path / f"worker-{name}.log",
                                 wrapper=host.exec_prefix())
                worker.worker_name = worker.args[2]
                drill.processes.append(worker)
                drill.workers[name] = worker
            _wait_ready(drill)
            yield drill
        finally:
            for process in drill.processes if drill else []:
                process.stop()
            for proxy in proxies:
                proxy.stop()
            if redis_process is not None:
                redis_process.terminate()
                redis_process.wait(timeout=10)
            shutil.rmtree(redis_folder, ignore_errors=True)
            drop_database(db_name)


def _wait_ready(drill: Drill, timeout: float = 90) -> None:
    """Until the API answers over the veth network and both workers are registered in Redis."""
    deadline = time.monotonic() + timeout
    redis = Redis(port=drill.redis_port, socket_timeout=2)
    try:
        with drill.http() as http:
            while True:
                for process in drill.processes:
                    assert process.alive(), f"{process.log_path.name} exited\n{drill.logs()}"
                try:
                    api_up = http.get("/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    api_up = False
                names = {w.name for w in Worker.all(connection=redis)}
                if api_up and all(p.worker_name in names for p in drill.workers.values()):
                    return
                assert time.monotonic() < deadline, f"stack not ready in {timeout} s\n{drill.logs()}"
                time.sleep(0.2)
    finally:
        redis.close()


def _poll(what: str, condition: Any, drill: Drill, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{drill.logs()}")
        time.sleep(0.05)


def _row(drill: Drill, generation_id: str) -> tuple[str, int]:
    with drill.db() as conn:
        return conn.execute("SELECT status, attempt FROM generations WHERE id = %s", (generation_id,)).fetchone()


def _log_entries(process: Process, message: str, generation_id: str | None = None) -> list[dict[str, Any]]:
    """The JSON log entries of ``process`` whose message starts with ``message`` (about ``generation_id``)."""
    entries = []
    for line in process.output().splitlines():
        if line.startswith("{") and f'"{message}' in line:
            entry = json.loads(line)
            if generation_id is None or entry.get("metadata", {}).get("generationId") == generation_id:
                entries.append(entry)
    return entries


def _exporter_samples(drill: Drill) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    env = {**drill.env, "DATABASE_URL": drill.database_url, "REDIS_URL": f"redis://127.0.0.1:{drill.redis_port}/0"}
    return scrape_exporter_once(env, drill.tmp, timeout=30)


def test_partitioned_worker_is_fenced_and_its_generation_rerun_on_the_other_host(drill: Drill) -> None:
    plan = FaultPlan(FAULTS)
    http = drill.http()
    admin = drill.headers("admin", Role.ADMIN)
    user = f"user_{uuid.uuid4().hex[:10]}"
    assert http.post("/credits/grants", json={"userId": user, "amount": 1000}, headers=admin).status_code == 201
    created = http.post("/generations", json={"poseIds": POSES, "prompt": "partition drill"},
                        headers=drill.headers(user))
    assert created.status_code == 202, created.text
    generation_id = created.json()["generationId"]

    # The host whose worker forked a work-horse for attempt 1 holds it; cut it off while the horse runs.
    _poll("attempt 1 processing", lambda: _row(drill, generation_id) == ("processing", 1), drill, 30)
    holder = _poll("a work-horse for attempt 1",
                   lambda: next((n for n, w in drill.workers.items() if child_pids(w.pid)), None), drill, 10)
    other = next(name for name in drill.workers if name != holder)
    # Cut off once every pose is inside the provider call (slot taken, its wait recorded in Redis): what the
    # horse sends from now on is its lease renewals, then each pose's outcome.
    slot_waits = Redis(port=drill.redis_port, socket_timeout=2)
    _poll("every pose in the provider call", lambda: sum(
        int(float(v)) for k, v in slot_waits.hgetall(PROVIDER_SLOT_WAIT.key).items() if k.startswith(b"le:"))
        == len(POSES), drill, 20)
    slot_waits.close()
    drill.net.partition(holder)
    partitioned_at = time.monotonic()

    # The lease lapses (its renewals vanish), the other host's reaper re-queues under attempt 2.
    _poll("the reaper's re-queue", lambda: _row(drill, generation_id)[1] == 2, drill, 30)
    requeued_after = time.monotonic() - partitioned_at
    drill.net.heal(holder)
    healed_at = time.monotonic()

    done = _poll("the re-run's outcome", lambda: (lambda b: b if b["status"] in ("completed", "failed") else None)(
        http.get(f"/generations/{generation_id}", headers=drill.headers(user)).json()), drill, 60)
    first = [plan.pick(generation_id, position, 1) for position in range(len(POSES))]
    second = [plan.pick(generation_id, position, 2) for position in range(len(POSES))]
    failures = sum(1 for fault in second if fault)
    assert done["status"] == ("failed" if failures == len(POSES) else "completed"), done
    assert [p["errorType"] for p in done["poses"]] == [f.value if f else None for f in second], done
    assert done["creditsCharged"] == PRICE * len(POSES)
    assert done["creditsRefunded"] == PRICE * failures
    assert http.get("/credits", headers=drill.headers(user)).json()["balance"] == 1000 - PRICE * (len(POSES) - failures)

    # The cut-off horse's late writes reach the database after the heal and are refused: the lease renewal
    # that was in flight, each pose's outcome (and the refund of each failing one), the finish.
    fenced = drill.workers[holder]
    _poll("the fenced attempt's refused finish",
          lambda: _log_entries(fenced, "Generation ownership lost before finishing", generation_id), drill, 30)
    assert _log_entries(fenced, "Lease lost", generation_id), fenced.output()
    refused = {e["metadata"]["poseId"] for e in _log_entries(fenced, "Pose result refused", generation_id)}
    unrefunded = {e["metadata"]["poseId"] for e in _log_entries(fenced, "Pose generation failed", generation_id)
                  if e["metadata"].get("refunded") is False}
    assert refused == {POSES[i] for i, f in enumerate(first) if not f}, fenced.output()
    assert unrefunded == {POSES[i] for i, f in enumerate(first) if f}, fenced.output()
    assert not _log_entries(fenced, "Generated pose successfully", generation_id), "a fenced pose counted as generated"

    with drill.db() as conn:
        assert _row(drill, generation_id) == (done["status"], 2)
        # Each delivered image is attempt 2's, under a key the fenced attempt cannot write.
        keys = [k for (k,) in conn.execute(
            "SELECT image_key FROM generation_poses WHERE generation_id = %s ORDER BY position", (generation_id,))]
        assert keys == [None if f else f"{generation_id}/{i}-{POSES[i]}-a2.png" for i, f in enumerate(second)]
        ledger = conn.execute(
            "SELECT kind, count(*), sum(amount) FROM credit_ledger WHERE generation_id = %s GROUP BY kind",
            (generation_id,)).fetchall()
        expected = {("charge", PRICE * len(POSES))} | ({("refund", PRICE * failures)} if failures else set())
        assert {(kind, total) for kind, _, total in ledger} == expected, ledger
        refunds = conn.execute(
            "SELECT generation_pose_id, count(*) FROM credit_ledger WHERE generation_id = %s AND kind = 'refund'"
            " GROUP BY 1 HAVING count(*) > 1", (generation_id,)).fetchall()
        assert not refunds, f"poses refunded twice: {refunds}"
        events = conn.execute("SELECT count(*) FROM error_events WHERE generation_id = %s",
                              (generation_id,)).fetchone()[0]
        assert events == failures, "only attempt 2's failures are recorded"
        check_ledger_invariants(conn)

    samples = _exporter_samples(drill)
    assert samples[("pose_generation_requeues_total", (("reason", "lease_expired"),))] == 1
    assert samples[("pose_generations_total", (("status", done["status"]),))] == 1

    # The healed worker takes new work: with the other host's worker stopped, it alone can run this one.
    drill.workers[other].stop()
    again = http.post("/generations", json={"poseIds": POSES[:2], "prompt": "after the heal"},
                      headers=drill.headers(user)).json()["generationId"]
    after = _poll("the healed worker's generation", lambda: (lambda b: b if b["status"] in ("completed", "failed")
                  else None)(http.get(f"/generations/{again}", headers=drill.headers(user)).json()), drill, 60)
    assert [p["errorType"] for p in after["poses"]] == [
        f.value if f else None for f in (plan.pick(again, i, 1) for i in range(2))]
    assert any(e["metadata"].get("generationId") == again for e in _log_entries(fenced, "Processing generation job"))
    with drill.db() as conn:
        check_ledger_invariants(conn)
    http.close()
    print(f"re-queued {requeued_after:.1f} s after the partition; re-run and fenced writes done "
          f"{time.monotonic() - healed_at:.1f} s after the heal")
