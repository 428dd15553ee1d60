"""Dependencies failing under load, on private PostgreSQL and Redis servers this test starts and stops.

Invariants checked after each scenario: every accepted generation ends completed or failed within a bound;
per user balance = grants - charges + refunds, never negative, refunds only of failed poses, once each.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg

from app.devservices import start_postgres, start_redis, stop_service
from tests.stack import Stack, check_ledger_invariants, free_port, prepare_database, running_stack

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello"]


def _all_finish(stack: Stack, accepted: list[tuple[str, str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with stack.db() as conn:
        while time.monotonic() < deadline:
            open_ = conn.execute("SELECT count(*) FROM generations WHERE id = ANY(%s) AND status NOT IN"
                                 " ('completed', 'failed')", ([g for _, g in accepted],)).fetchone()[0]
            if open_ == 0:
                return
            time.sleep(0.2)
        stuck = conn.execute("SELECT id, status, attempt FROM generations WHERE id = ANY(%s) AND status NOT IN"
                             " ('completed', 'failed')", ([g for _, g in accepted],)).fetchall()
    raise AssertionError(f"not finished within {timeout} s: {stuck}\n{stack.logs()}")


def test_redis_stopped_and_restarted_while_requests_arrive(
    template_db: str, tmp_path: Path
) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    redis_dir = tmp_path / "redis-data"
    redis = start_redis(redis_url, redis_dir).process
    try:
        with running_stack(template_db, tmp_path / "stack", workers=1, REDIS_URL=redis_url,
                           POSEGEN_LOCAL_LATENCY="0.2") as stack:
            user = stack.new_user(credits=100_000)
            accepted = []
            for i in range(5):
                answer = stack.create_generation(user, POSES, prompt=f"before {i}")
                assert answer.status_code == 202
                accepted.append((user, answer.json()["generationId"]))
            redis.terminate()
            redis.wait(timeout=10)
            balance_before = stack.balance(user)
            for i in range(5):
                answer = stack.create_generation(user, POSES, prompt=f"during {i}")
                assert answer.status_code == 503, answer.text
                assert answer.headers["Retry-After"] == "5"
            assert stack.balance(user) == balance_before
            health = stack.http.get("/health")
            assert health.status_code == 503 and health.json()["checks"]["redis"]["status"] == "disconnected"
            assert health.headers["Retry-After"] == "5"
            redis = start_redis(redis_url, redis_dir).process
            deadline = time.monotonic() + 15
            while stack.http.get("/health").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert stack.http.get("/health").status_code == 200
            for i in range(5):
                answer = stack.create_generation(user, POSES, prompt=f"after {i}")
                assert answer.status_code == 202, answer.text
                accepted.append((user, answer.json()["generationId"]))
            # Jobs queued before the outage were lost with Redis' memory: the reaper re-queues them.
            _all_finish(stack, accepted, timeout=90)
            with stack.db() as conn:
                check_ledger_invariants(conn)
                statuses = dict(conn.execute(
                    "SELECT status, count(*) FROM generations WHERE id = ANY(%s) GROUP BY status",
                    ([g for _, g in accepted],)).fetchall())
                assert statuses == {"completed": 10}, statuses
    finally:
        redis.terminate()


def test_postgres_connections_terminated_and_server_restarted_mid_load(
    template_db: str, tmp_path: Path
) -> None:
    port = free_port()
    admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    # The server runs as the 'postgres' user, which cannot enter pytest's private temp folders.
    pg_dir = Path(tempfile.mkdtemp(prefix="posegen-pg-"))
    pg_dir.chmod(0o755)
    postgres = start_postgres(admin_url, pg_dir)
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE posegen")
        database_url = f"postgresql://postgres@127.0.0.1:{port}/posegen"
        prepare_database(database_url)
        with running_stack(template_db, tmp_path / "stack", workers=2, DATABASE_URL=database_url,
                           POSEGEN_LOCAL_LATENCY="0.3") as stack:
            stack.database_url = database_url
            users = [stack.new_user(credits=100_000) for _ in range(3)]
            accepted: list[tuple[str, str]] = []
            errors: list[int] = []
            stop = threading.Event()

            def load() -> None:
                with httpx.Client(base_url=stack.http.base_url, timeout=10) as client:
                    i = 0
                    while not stop.is_set():
                        user = users[i % len(users)]
                        i += 1
                        try:
                            answer = client.post("/generations", json={"poseIds": POSES, "prompt": f"load {i}"},
                                                 headers=stack.headers(user))
                        except httpx.HTTPError:
                            continue
                        if answer.status_code == 202:
                            accepted.append((user, answer.json()["generationId"]))
                        else:
                            errors.append(answer.status_code)
                        time.sleep(0.05)

            thread = threading.Thread(target=load)
            thread.start()
            time.sleep(2)
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE datname = 'posegen' AND pid <> pg_backend_pid()")
            time.sleep(2)
            stop_service(postgres)
            time.sleep(1)
            postgres = start_postgres(admin_url, pg_dir)
            time.sleep(3)
            stop.set()
            thread.join(timeout=30)
            assert len(accepted) > 10
            # The pool recovered: the API serves again after the restart.
            assert stack.http.get("/health").status_code == 200
            after = stack.create_generation(users[0], POSES[:1])
            assert after.status_code == 202, after.text
            accepted.append((users[0], after.json()["generationId"]))
            assert set(errors) <= {503}, errors
            _all_finish(stack, accepted, timeout=120)
            with stack.db() as conn:
                check_ledger_invariants(conn)
    finally:
        stop_service(postgres)
        shutil.rmtree(pg_dir, ignore_errors=True)
