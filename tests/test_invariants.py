"""Faults and races with the ledger, queue and database checked after each: nothing lost, nothing charged twice.

Invariants: every accepted generation ends completed or failed within the stated bound; per user
balance = grants - charges + refunds, never negative; refunds only of failed poses, at most one each.
"""

from __future__ import annotations

import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from app.api.auth import Role
from tests.fakes.supabase_server import FakeSupabaseStorage
from tests.stack import Stack, check_ledger_invariants

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]
# Bound for a generation to end after its worker dies: lease (3 s) + reaper tick + the work itself, with margin.
FINISH_BOUND_SECONDS = 60


def test_sigkill_at_random_points_repeatedly_loses_nothing(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=1, POSEGEN_LOCAL_LATENCY="0.3-1.5", POSEGEN_MAX_ATTEMPTS="10")
    user = stack.new_user(credits=100_000)
    rng = random.Random(7)
    accepted = []
    for round_ in range(4):
        for i in range(3):
            answer = stack.create_generation(user, POSES, prompt=f"kill round {round_}.{i}")
            assert answer.status_code == 202
            accepted.append(answer.json()["generationId"])
        time.sleep(rng.uniform(0.2, 2.0))
        victim = stack.workers[-1]
        if rng.random() < 0.5:
            for pid in victim.children():  # the work-horse only
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        else:
            victim.kill(signal.SIGKILL)  # worker and work-horse
            stack.start_worker()
    for generation_id in accepted:
        done = stack.wait_finished(user, generation_id, timeout=FINISH_BOUND_SECONDS)
        assert done["status"] in ("completed", "failed")
    with stack.db() as conn:
        check_ledger_invariants(conn)
        statuses = dict(conn.execute("SELECT status, count(*) FROM generations GROUP BY status").fetchall())
        assert statuses.get("completed", 0) + statuses.get("failed", 0) == len(accepted), statuses


def test_hundred_concurrent_generations_at_the_edge_of_the_balance(stack: Stack) -> None:
    user = stack.new_user(credits=37 * 30)

    def create(i: int) -> int:
        with httpx.Client(base_url=stack.http.base_url, timeout=60) as client:
            return client.post("/generations", json={"poseIds": POSES[:1], "prompt": f"edge {i}"},
                               headers=stack.headers(user)).status_code

    with ThreadPoolExecutor(100) as pool:
        codes = list(pool.map(create, range(100)))
    assert codes.count(202) == 37 and codes.count(402) == 63, sorted(set(codes))
    with stack.db() as conn:
        assert conn.execute("SELECT balance FROM credit_accounts WHERE user_id = %s", (user,)).fetchone()[0] == 0
        check_ledger_invariants(conn)


def test_storage_failing_is_storage_error_and_refunded(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    with FakeSupabaseStorage() as supabase:
        supabase.always_fail(503)
        stack: Stack = fresh_stack(workers=1, STORAGE_BACKEND="supabase", SUPABASE_URL=supabase.url,
                                   SUPABASE_SERVICE_KEY=supabase.service_key, SUPABASE_BUCKET=supabase.bucket)
        user = stack.new_user(credits=1000)
        done = stack.wait_finished(user, stack.create_generation(user, POSES[:2]).json()["generationId"])
        assert done["status"] == "failed" and done["errorType"] == "STORAGE_ERROR"
        assert [p["errorType"] for p in done["poses"]] == ["STORAGE_ERROR", "STORAGE_ERROR"]
        assert stack.balance(user) == 1000
        supabase.reset()
        ok = stack.wait_finished(user, stack.create_generation(user, POSES[:1]).json()["generationId"])
        assert ok["status"] == "completed"
        assert ok["poses"][0]["imageUrl"].startswith(supabase.url)
        assert httpx.get(ok["poses"][0]["imageUrl"], timeout=10).content[:8] == b"\x89PNG\r\n\x1a\n"
        with stack.db() as conn:
            check_ledger_invariants(conn)


ADMIN_ROUTES = ["/metrics", "/metrics/top-users", "/metrics/errors", "/metrics/health-indicators"]


def test_access_matrix_for_metrics_routes(stack: Stack) -> None:
    user = stack.new_user()
    for path in [*ADMIN_ROUTES, "/metrics/popular-poses"]:
        assert stack.http.get(path).status_code == 401, path
        assert stack.http.get(path, headers={"Authorization": "Bearer x.y.z"}).status_code == 401, path
        assert stack.http.get(path, headers=stack.headers("ops", Role.ADMIN)).status_code == 200, path
    for path in ADMIN_ROUTES:
        assert stack.http.get(path, headers=stack.headers(user)).status_code == 403, path
    assert stack.http.get("/metrics/popular-poses", headers=stack.headers(user)).status_code == 200
