"""An admin's story: the seed's metrics endpoints count exactly what is in the database, over any window.

Most stacks here run the API only (no worker) so the rows inserted are the rows counted; one test
runs the real flow through a worker. Rollups (migration 003) are checked against plain SQL over the
raw tables, including exact window edges, status transitions, rewrites, deletes and concurrent writers.
"""

from __future__ import annotations

import asyncio
import os
import pty
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import astuple
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry

from app import QUEUE_NAME
from app.api.auth import Role
from app.bookkeeping import fold_pending_deltas
from app.domain.metrics import (
    Window,
    WindowTotals,
    error_counts,
    percent,
    popular_poses,
    top_users,
    window_totals,
)
from app.domain.thresholds import (
    AVG_TIME_PER_POSE,
    QUEUE_DEPTH,
    REFUND_RATE,
    SUCCESS_RATE,
    HealthStatus,
    ThresholdTable,
)
from app.timestamps import iso_timestamp
from tests.stack import ROOT, Stack, claim_redis_db, free_port, redis_url, release_redis_db

StackFactory = Callable[..., Stack]
ADMIN_ROUTES = ["/metrics", "/metrics/top-users", "/metrics/errors", "/metrics/health-indicators"]
ALL_ROUTES = [*ADMIN_ROUTES, "/metrics/popular-poses"]
PRICE = 30
WINDOW_FIELDS = ("startTime", "endTime")


def ms(moment: datetime) -> datetime:
    """Millisecond precision, so timestamps compare equal to the API's ISO strings."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def add_generation(
    conn: psycopg.Connection[Any], generation_id: str, user_id: str, created_at: datetime, status: str,
    poses: list[tuple[str, str, int | None]], *, duration_ms: int | None = None,
    refund_at: datetime | None = None, error_type: str = "FLUX_API_ERROR",
) -> None:
    """A generation as the domain writes it: charged at creation; each failed pose refunded and recorded."""
    conn.execute("INSERT INTO credit_accounts (user_id, balance) VALUES (%s, 0) ON CONFLICT DO NOTHING", (user_id,))
    conn.execute(
        "INSERT INTO generations (id, user_id, prompt, status, poses_count, price_per_pose, credits_charged,"
        " created_at, duration_ms) VALUES (%s, %s, 'p', %s, %s, %s, %s, %s, %s)",
        (generation_id, user_id, status, len(poses), PRICE, PRICE * len(poses), created_at, duration_ms),
    )
    conn.execute(
        "INSERT INTO credit_ledger (user_id, kind, amount, balance_after, generation_id, created_at)"
        " VALUES (%s, 'charge', %s, 0, %s, %s)", (user_id, PRICE * len(poses), generation_id, created_at),
    )
    for position, (pose_id, pose_status, pose_ms) in enumerate(poses):
        (row_id,) = conn.execute(
            "INSERT INTO generation_poses (generation_id, position, pose_id, status, duration_ms)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id", (generation_id, position, pose_id, pose_status, pose_ms),
        ).fetchone()  # type: ignore[misc]
        if pose_status == "failed":
            when = refund_at or created_at
            conn.execute(
                "INSERT INTO credit_ledger (user_id, kind, amount, balance_after, generation_id, generation_pose_id,"
                " created_at) VALUES (%s, 'refund', %s, 0, %s, %s, %s)",
                (user_id, PRICE, generation_id, row_id, when),
            )
            conn.execute(
                "INSERT INTO error_events (error_type, component, user_id, generation_id, generation_pose_id,"
                " occurred_at) VALUES (%s, 'Worker', %s, %s, %s, %s)",
                (error_type, user_id, generation_id, row_id, when),
            )


def add_error(conn: psycopg.Connection[Any], error_type: str, occurred_at: datetime) -> None:
    conn.execute("INSERT INTO error_events (error_type, component, occurred_at) VALUES (%s, 'API', %s)",
                 (error_type, occurred_at))


def get(stack: Stack, path: str, role: Role = Role.ADMIN, **params: Any) -> dict[str, Any]:
    answer = stack.http.get(path, params=params, headers=stack.headers("metrics-admin", role))
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def posegen_status(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", "status", "--url", stack.base_url, *args], cwd=ROOT,
                          env={**stack.env, **env}, capture_output=True, text=True, timeout=60)


def run(coroutine_factory: Callable[[psycopg.AsyncConnection[Any]], Any], database_url: str) -> Any:
    async def main() -> Any:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return await coroutine_factory(conn)

    return asyncio.run(main())


# --- GET /metrics --------------------------------------------------------------------------------


def test_system_metrics_count_every_field_over_the_window(fresh_stack: StackFactory) -> None:
    stack = fresh_stack(workers=0)
    now = ms(datetime.now(UTC))
    day = timedelta(days=1)
    with stack.db() as conn:
        # Inside the last 24 h (the first one 30 s after the window opens).
        add_generation(conn, "g1", "alice", now - day + timedelta(seconds=30), "completed",
                       [("pose_tree_pose", "completed", 10_000), ("pose_tree_pose", "completed", 12_000),
                        ("pose_arms_crossed", "failed", 5_000)],
                       duration_ms=20_000, refund_at=now - day + timedelta(minutes=1))
        add_generation(conn, "g2", "bob", now - timedelta(hours=12), "completed",
                       [("pose_arms_crossed", "completed", 9_000), ("pose_waving_hello", "completed", 11_000)],
                       duration_ms=31_001)
        add_generation(conn, "g3", "bob", now - timedelta(hours=3), "failed",
                       [("pose_waving_hello", "failed", None)], duration_ms=9_001,
                       refund_at=now - timedelta(hours=3) + timedelta(minutes=1))
        add_generation(conn, "g4", "carol", now - timedelta(minutes=30), "processing",
                       [("pose_tree_pose", "completed", 7_000)] + [("pose_tree_pose", "pending", None)] * 3)
        add_generation(conn, "g5", "carol", now - timedelta(seconds=5), "queued",
                       [("pose_arms_crossed", "pending", None)] * 2)
        # Outside: 30 s before the window opens, and in the future (the window ends now).
        add_generation(conn, "g0", "alice", now - day - timedelta(seconds=30), "completed",
                       [("pose_tree_pose", "completed", 1_000)] * 5, duration_ms=1_000)
        add_generation(conn, "g6", "alice", now + timedelta(minutes=5), "queued", [("pose_tree_pose", "pending", None)])
        # Grants are not spending.
        conn.execute("INSERT INTO credit_ledger (user_id, kind, amount, balance_after, created_at)"
                     " VALUES ('alice', 'grant', 1000, 1000, %s)", (now - timedelta(hours=1),))
    queue = Queue(QUEUE_NAME, connection=Redis.from_url(stack.redis_url))
    jobs = [queue.enqueue("app.worker.jobs.process_generation", f"gen_{i}", 1) for i in range(4)]
    # A worker holds one: RQ 3 records a started job as "<job id>:<execution id>" in the started registry.
    queue.connection.zadd(StartedJobRegistry(queue=queue).key, {f"{jobs[0].id}:execution-1": time.time() + 600})
    FailedJobRegistry(queue=queue).add(jobs[1], ttl=600)

    body = get(stack, "/metrics")
    assert body == {
        "totalGenerations": 5, "activeGenerations": 2, "completedGenerations": 2, "failedGenerations": 1,
        "avgGenerationTime": 20_001,  # (20000 + 31001 + 9001) / 3 = 20000.67, rounded
        "avgPosesPerGeneration": 2.4, "successRate": 40.0,
        "queueDepth": 5, "queueWaiting": 4, "queueActive": 1, "queueFailed": 1,
        "totalPosesGenerated": 5, "totalCreditsSpent": 90 + 60 + 30 + 120 + 60, "totalCreditsRefunded": 60,
        "startTime": body["startTime"], "endTime": body["endTime"],
    }
    start, end = (datetime.fromisoformat(body[k].replace("Z", "+00:00")) for k in ("startTime", "endTime"))
    assert end - start == day and now <= end < now + timedelta(seconds=20)
    assert body["endTime"].endswith("Z") and len(body["endTime"]) == len("2025-10-14T10:30:00.000Z")
    again = get(stack, "/metrics", period="24h")
    assert {**again, "startTime": "", "endTime": ""} == {**body, "startTime": "", "endTime": ""}

    last_hour = get(stack, "/metrics", period="1h")
    assert {k: v for k, v in last_hour.items() if not k.startswith("queue") and k not in WINDOW_FIELDS} == {
        "totalGenerations": 2, "activeGenerations": 2, "completedGenerations": 0, "failedGenerations": 0,
        "avgGenerationTime": 0, "avgPosesPerGeneration": 3.0, "successRate": 0.0, "totalPosesGenerated": 1,
        "totalCreditsSpent": 180, "totalCreditsRefunded": 0,
    }
    week = get(stack, "/metrics", period="7d")
    assert (week["totalGenerations"], week["completedGenerations"], week["totalPosesGenerated"]) == (6, 3, 10)
    assert week["avgGenerationTime"] == 15_251  # 61002 / 4 = 15250.5, half up
    assert week["successRate"] == 50.0 and week["avgPosesPerGeneration"] == 2.83  # 17 / 6
    assert week["totalCreditsSpent"] == 360 + 150


def test_metrics_of_an_empty_system_are_zero_and_healthy(fresh_stack: StackFactory) -> None:
    stack = fresh_stack(workers=0)
    for period in ("1h", "24h", "7d", "30d"):
        body = get(stack, "/metrics", period=period)
        assert {k: v for k, v in body.items() if k not in WINDOW_FIELDS} == {
            "totalGenerations": 0, "activeGenerations": 0, "completedGenerations": 0, "failedGenerations": 0,
            "avgGenerationTime": 0, "avgPosesPerGeneration": 0.0, "successRate": 0.0, "queueDepth": 0,
            "queueWaiting": 0, "queueActive": 0, "queueFailed": 0, "totalPosesGenerated": 0,
            "totalCreditsSpent": 0, "totalCreditsRefunded": 0,
        }
    assert get(stack, "/metrics/top-users") == {"users": []}
    assert get(stack, "/metrics/popular-poses", role=Role.USER) == {"poses": []}
    assert get(stack, "/metrics/errors") == {"errors": []}
    health = get(stack, "/metrics/health-indicators")
    assert health["status"] == "good" and health["period"] == "24h"
    assert [(i["key"], i["value"], i["status"]) for i in health["indicators"]] == [
        ("successRate", None, "good"), ("avgTimePerPose", None, "good"), ("queueDepth", 0.0, "good"),
        ("refundRate", None, "good")]
    notes = {i["key"]: i["note"] for i in health["indicators"]}
    assert "no data is not a failure" in notes["successRate"] and "no data is not a failure" in notes["refundRate"]
    result = posegen_status(stack)
    assert result.returncode == 0, result.stderr
    assert "overall: GOOD" in result.stdout and "no data" in result.stdout and "\x1b[" not in result.stdout


# --- Exact windows, straight from the domain queries --------------------------------------------

BRUTE_FORCE_TOTALS = """
SELECT count(*), count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = 'processing'),
       count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),
       coalesce(sum(poses_count), 0),
       (SELECT count(*) FROM generation_poses p JOIN generations g ON g.id = p.generation_id
         WHERE p.status = 'completed' AND g.created_at >= %(start)s AND g.created_at < %(end)s),
       coalesce(sum(duration_ms), 0), count(duration_ms),
       (SELECT coalesce(sum(p.duration_ms), 0) FROM generation_poses p JOIN generations g ON g.id = p.generation_id
         WHERE g.created_at >= %(start)s AND g.created_at < %(end)s),
       (SELECT count(p.duration_ms) FROM generation_poses p JOIN generations g ON g.id = p.generation_id
         WHERE g.created_at >= %(start)s AND g.created_at < %(end)s),
       (SELECT coalesce(sum(amount), 0) FROM credit_ledger
         WHERE kind = 'charge' AND created_at >= %(start)s AND created_at < %(end)s),
       (SELECT coalesce(sum(amount), 0) FROM credit_ledger
         WHERE kind = 'refund' AND created_at >= %(start)s AND created_at < %(end)s)
  FROM generations WHERE created_at >= %(start)s AND created_at < %(end)s
"""


def brute_force(conn: psycopg.Connection[Any], window: Window) -> tuple[int, ...]:
    row = conn.execute(BRUTE_FORCE_TOTALS, {"start": window.start, "end": window.end}).fetchone()
    assert row is not None
    return tuple(int(v) for v in row)


def test_window_edges_are_exact_to_the_microsecond(fresh_stack: StackFactory) -> None:
    stack = fresh_stack(workers=0, api=False)
    start = datetime(2025, 10, 13, 10, 30, tzinfo=UTC)
    end = start + timedelta(days=1)
    tick = timedelta(microseconds=1)
    with stack.db() as conn:
        for name, moment in (("at_start", start), ("at_end_minus_tick", end - tick),
                             ("whole_hour", start + timedelta(hours=5)), ("before_start", start - tick),
                             ("at_end", end)):
            add_generation(conn, name, "u", moment, "completed", [("pose_tree_pose", "completed", 1_000)],
                           duration_ms=2_000)
    totals = run(lambda conn: window_totals(conn, Window(start, end)), stack.database_url)
    assert (totals.generations, totals.completed, totals.poses_delivered, totals.credits_charged) == (3, 3, 3, 90)
    # A window without a whole hour inside, and one aligned to hours, come out right too.
    inside_one_hour = Window(start + timedelta(minutes=10), start + timedelta(minutes=20))
    aligned = Window(start.replace(minute=0), start.replace(minute=0) + timedelta(hours=5, minutes=30, microseconds=1))
    with stack.db() as conn:
        for window in (inside_one_hour, aligned):
            answer = run(lambda c, w=window: window_totals(c, w), stack.database_url)
            assert astuple(answer) == brute_force(conn, window)


def test_rollups_match_plain_sql_after_transitions_rewrites_and_deletes(fresh_stack: StackFactory) -> None:
    stack = fresh_stack(workers=0, api=False)
    rnd = random.Random(20251014)
    now = datetime.now(UTC)
    with stack.db() as conn:
        poses = [r[0] for r in conn.execute("SELECT pose_id FROM poses ORDER BY pose_id")]
        users = [f"user_{i:02d}" for i in range(9)]
        generations = []
        for i in range(240):
            created = now - timedelta(seconds=rnd.uniform(-3600, 40 * 3600))
            user = rnd.choice(users)
            with conn.transaction():
                add_generation(conn, f"g{i:03d}", user, created, "queued",
                               [(rnd.choice(poses), "pending", None) for _ in range(rnd.randint(1, 5))])
            generations.append((f"g{i:03d}", user, created))
        # The lifecycle the worker and the reaper drive, as plain UPDATEs.
        for generation_id, user, created in generations:
            fate = rnd.random()
            if fate < 0.1:
                continue
            conn.execute("UPDATE generations SET status = 'processing' WHERE id = %s", (generation_id,))
            if fate < 0.2:
                continue
            if fate < 0.25:  # the reaper re-queues it
                conn.execute("UPDATE generations SET status = 'queued' WHERE id = %s", (generation_id,))
                continue
            delivered = 0
            for (row_id,) in conn.execute("SELECT id FROM generation_poses WHERE generation_id = %s",
                                          (generation_id,)).fetchall():
                with conn.transaction():
                    if rnd.random() < 0.8:
                        conn.execute("UPDATE generation_poses SET status = 'completed', duration_ms = %s WHERE id = %s",
                                     (rnd.randint(100, 90_000), row_id))
                        delivered += 1
                        continue
                    conn.execute("UPDATE generation_poses SET status = 'failed', duration_ms = %s WHERE id = %s",
                                 (rnd.choice([None, 5_000]), row_id))
                    when = created + timedelta(minutes=rnd.randint(0, 90))
                    conn.execute("INSERT INTO credit_ledger (user_id, kind, amount, balance_after, generation_id,"
                                 " generation_pose_id, created_at) VALUES (%s, 'refund', 30, 0, %s, %s, %s)",
                                 (user, generation_id, row_id, when))
                    add_error(conn, rnd.choice(["FLUX_API_ERROR", "TIMEOUT_ERROR", "STORAGE_ERROR"]), when)
            conn.execute("UPDATE generations SET status = %s, duration_ms = %s WHERE id = %s",
                         ("completed" if delivered else "failed", rnd.randint(1_000, 200_000), generation_id))
        for generation_id, _, _ in generations[:15]:  # rewritten into another hour
            conn.execute("UPDATE generations SET created_at = created_at - interval '3 hours 7 minutes'"
                         " WHERE id = %s", (generation_id,))
        conn.execute("UPDATE generations SET user_id = 'user_moved' WHERE id = %s", (generations[15][0],))
        for generation_id, _, _ in generations[20:25]:
            conn.execute("DELETE FROM credit_ledger WHERE generation_id = %s", (generation_id,))
            conn.execute("DELETE FROM generation_poses WHERE generation_id = %s", (generation_id,))
            conn.execute("DELETE FROM generations WHERE id = %s", (generation_id,))
        conn.execute("DELETE FROM error_events WHERE id IN (SELECT id FROM error_events ORDER BY id LIMIT 5)")

        windows = []
        for i in range(150):
            start = ms(now - timedelta(seconds=rnd.uniform(-2 * 3600, 45 * 3600)))
            if i % 3 == 0:
                start = start.replace(minute=0, second=0, microsecond=0)
            length = timedelta(seconds=rnd.choice([60, 3600, 5000, 86400, 7 * 86400, rnd.uniform(1, 200_000)]))
            windows.append(Window(start, start + length))

        async def read_all(aconn: psycopg.AsyncConnection[Any]) -> list[WindowTotals]:
            answers = [await window_totals(aconn, w) for w in windows[:75]]
            await fold_pending_deltas(aconn)  # half read with unfolded deltas, half after folding
            return answers + [await window_totals(aconn, w) for w in windows[75:]]

        answers = run(read_all, stack.database_url)
        for window, answer in zip(windows, answers, strict=True):
            assert astuple(answer) == brute_force(conn, window), window

        users_now = run(lambda c: top_users(c, 100), stack.database_url)
        expected_users = conn.execute(
            "SELECT g.user_id, count(*), count(*) FILTER (WHERE g.status = 'completed'),"
            " (SELECT count(*) FROM generation_poses p JOIN generations g2 ON g2.id = p.generation_id"
            "   WHERE g2.user_id = g.user_id AND p.status = 'completed')"
            " FROM generations g GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
        assert [astuple(u) for u in users_now] == [tuple(r) for r in expected_users]
        pose_usage = run(lambda c: popular_poses(c, 100), stack.database_url)
        expected_poses = conn.execute("SELECT pose_id, count(*) FROM generation_poses GROUP BY 1"
                                      " ORDER BY 2 DESC, 1").fetchall()
        assert [(p.pose_id, p.slots) for p in pose_usage] == [tuple(r) for r in expected_poses]
        errors_all = run(lambda c: error_counts(c, None), stack.database_url)
        expected_errors = conn.execute("SELECT error_type, count(*), max(occurred_at) FROM error_events"
                                       " GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
        assert [astuple(e) for e in errors_all] == [tuple(r) for r in expected_errors]

        # Rebuilding from scratch (the migration's backfill) lands on the same rollups.
        tables = ["metrics_generation_hourly", "metrics_user_totals", "metrics_pose_usage", "metrics_credit_hourly",
                  "metrics_error_hourly", "metrics_error_totals"]
        run(lambda c: fold_pending_deltas(c, 10**7), stack.database_url)

        def nonzero(table: str) -> list[tuple[Any, ...]]:
            rows = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            return [tuple(r) for r in rows if any(v for v in r if isinstance(v, int))]

        incremental = {t: nonzero(t) for t in tables}
        conn.execute("SELECT metrics_rebuild()")
        assert {t: nonzero(t) for t in tables} == incremental


def test_concurrent_writers_never_deadlock_and_stay_exact(fresh_stack: StackFactory) -> None:
    """Writers touching the same poses in opposite orders, in the same hour, all at once."""
    stack = fresh_stack(workers=0, api=False)
    poses = ["pose_tree_pose", "pose_arms_crossed", "pose_waving_hello", "pose_standing_confident"]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def writer(index: int) -> None:
        try:
            with psycopg.connect(stack.database_url, autocommit=True) as conn:
                barrier.wait()
                for n in range(25):
                    order = poses if (index + n) % 2 else poses[::-1]
                    generation_id = f"w{index}_{n}"
                    with conn.transaction():
                        add_generation(conn, generation_id, f"user_{index % 3}", datetime.now(UTC), "queued",
                                       [(p, "pending", None) for p in order])
                    with conn.transaction():
                        conn.execute("UPDATE generations SET status = 'processing' WHERE id = %s", (generation_id,))
                        conn.execute("UPDATE generation_poses SET status = 'completed', duration_ms = 10"
                                     " WHERE generation_id = %s", (generation_id,))
                        conn.execute("UPDATE generations SET status = 'completed', duration_ms = 50 WHERE id = %s",
                                     (generation_id,))
                    add_error(conn, "NETWORK_ERROR", datetime.now(UTC))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    everything = Window(datetime.now(UTC) - timedelta(days=1), datetime.now(UTC) + timedelta(days=1))
    totals = run(lambda c: window_totals(c, everything), stack.database_url)
    assert (totals.generations, totals.completed, totals.poses_delivered, totals.pose_duration_sum_ms) == \
        (200, 200, 800, 8_000)
    assert (totals.duration_sum_ms, totals.credits_charged) == (200 * 50, 200 * 120)
    assert [astuple(e)[:2] for e in run(lambda c: error_counts(c, None), stack.database_url)] == \
        [("NETWORK_ERROR", 200)]


# --- Top users, popular poses, errors ------------------------------------------------------------


def test_top_users_popular_poses_and_errors(fresh_stack: StackFactory) -> None:
    stack = fresh_stack(workers=0)
    now = ms(datetime.now(UTC))
    hours = timedelta(hours=1)
    with stack.db() as conn:
        # bob and alice tie on 3 generations: alice first. carol 1, dave 2.
        add_generation(conn, "a1", "alice", now - 50 * hours, "completed",
                       [("pose_tree_pose", "completed", 1), ("pose_tree_pose", "completed", 1)], duration_ms=1)
        add_generation(conn, "a2", "alice", now - 5 * hours, "completed",
                       [("pose_arms_crossed", "completed", 1), ("pose_arms_crossed", "completed", 1),
                        ("pose_arms_crossed", "completed", 1), ("pose_waving_hello", "failed", 1)], duration_ms=1)
        add_generation(conn, "a3", "alice", now - 1 * hours, "failed", [("pose_waving_hello", "failed", 1)],
                       duration_ms=1)
        for n in range(3):
            add_generation(conn, f"b{n}", "bob", now - n * hours, "completed", [("pose_waving_hello", "completed", 1)],
                           duration_ms=1)
        add_generation(conn, "c1", "carol", now - 2 * hours, "queued", [("pose_standing_confident", "pending", None)])
        add_generation(conn, "d1", "dave", now - 2 * hours, "completed", [("pose_tree_pose", "completed", 1)],
                       duration_ms=1)
        add_generation(conn, "d2", "dave", now - 2 * hours, "processing", [("pose_arms_crossed", "pending", None)])
        conn.execute("DELETE FROM error_events")  # the failed poses above recorded some; start from known ones
        for error_type, ago in (("FLUX_API_ERROR", 1), ("FLUX_API_ERROR", 2), ("FLUX_API_ERROR", 30),
                                ("TIMEOUT_ERROR", 5), ("TIMEOUT_ERROR", 48), ("TIMEOUT_ERROR", 72),
                                ("STORAGE_ERROR", 240)):
            add_error(conn, error_type, now - ago * hours)

    assert get(stack, "/metrics/top-users") == {"users": [
        {"userId": "alice", "generationCount": 3, "totalPoses": 5, "successRate": 66.67},
        {"userId": "bob", "generationCount": 3, "totalPoses": 3, "successRate": 100.0},
        {"userId": "dave", "generationCount": 2, "totalPoses": 1, "successRate": 50.0},
        {"userId": "carol", "generationCount": 1, "totalPoses": 0, "successRate": 0.0},
    ]}
    assert [u["userId"] for u in get(stack, "/metrics/top-users", limit=2)["users"]] == ["alice", "bob"]

    # Slots: arms_crossed 4, waving_hello 5, tree_pose 3, standing_confident 1. Any signed-in user may ask.
    poses = get(stack, "/metrics/popular-poses", role=Role.USER)["poses"]
    assert [(p["poseId"], p["usageCount"]) for p in poses] == [
        ("pose_waving_hello", 5), ("pose_arms_crossed", 4), ("pose_tree_pose", 3), ("pose_standing_confident", 1)]
    assert poses[0] == {"poseId": "pose_waving_hello", "name": "Waving Hello", "usageCount": 5,
                        "category": poses[0]["category"]}
    with stack.db() as conn:
        names = dict(conn.execute("SELECT pose_id, name || '|' || category FROM poses").fetchall())
    assert all(f"{p['name']}|{p['category']}" == names[p["poseId"]] for p in poses)
    assert len(get(stack, "/metrics/popular-poses", role=Role.USER, limit=2)["poses"]) == 2

    def last(ago: int) -> str:
        return iso_timestamp(now - ago * hours)

    assert get(stack, "/metrics/errors") == {"errors": [
        {"errorType": "FLUX_API_ERROR", "count": 3, "lastOccurred": last(1)},
        {"errorType": "TIMEOUT_ERROR", "count": 3, "lastOccurred": last(5)},
        {"errorType": "STORAGE_ERROR", "count": 1, "lastOccurred": last(240)},
    ]}
    assert get(stack, "/metrics/errors", period="24h")["errors"] == [
        {"errorType": "FLUX_API_ERROR", "count": 2, "lastOccurred": last(1)},
        {"errorType": "TIMEOUT_ERROR", "count": 1, "lastOccurred": last(5)},
    ]
    assert [(e["errorType"], e["count"]) for e in get(stack, "/metrics/errors", period="7d")["errors"]] == [
        ("FLUX_API_ERROR", 3), ("TIMEOUT_ERROR", 3)]
    assert get(stack, "/metrics/errors", period="1h")["errors"] == []  # the 1 h old one is just outside


# --- Health indicators and posegen status ---------------------------------------------------------


@pytest.mark.parametrize(("table", "cases"), [
    (SUCCESS_RATE, [(100, "good"), (95.01, "good"), (95, "warning"), (90, "warning"), (89.99, "critical")]),
    (AVG_TIME_PER_POSE, [(0, "good"), (29.99, "good"), (30, "warning"), (60, "warning"), (60.01, "critical")]),
    (QUEUE_DEPTH, [(0, "good"), (99, "good"), (100, "warning"), (500, "warning"), (501, "critical")]),
    (REFUND_RATE, [(0, "good"), (4.99, "good"), (5, "warning"), (10, "warning"), (10.01, "critical")]),
])
def test_threshold_tables_follow_the_seed(table: ThresholdTable, cases: list[tuple[float, str]]) -> None:
    assert [(value, table.status(value).value) for value, _ in cases] == cases


def test_rates_round_half_up_to_two_decimals() -> None:
    assert [percent(2, 3), percent(1, 8), percent(1, 800), percent(5, 0)] == [66.67, 12.5, 0.13, 0.0]
    totals = WindowTotals(8, 0, 0, 5, 3, 5, 0, 5, 2, 0, 0, 0, 0)
    assert (totals.avg_generation_ms, totals.avg_poses_per_generation, totals.success_rate) == (3, 0.63, 62.5)


def test_health_indicators_and_status_command_report_critical(fresh_stack: StackFactory) -> None:
    stack = fresh_stack(workers=0)
    now = datetime.now(UTC)
    with stack.db() as conn:
        # 9 completed + 1 failed = 90 % (warning); poses take 61 s each (critical).
        for n in range(9):
            add_generation(conn, f"ok{n}", "u", now - timedelta(minutes=n + 1), "completed",
                           [("pose_tree_pose", "completed", 61_000)], duration_ms=61_000)
        add_generation(conn, "bad", "u", now - timedelta(minutes=20), "failed",
                       [("pose_tree_pose", "failed", 61_000)], duration_ms=61_000)
        add_generation(conn, "waiting", "u", now - timedelta(minutes=21), "queued",
                       [("pose_tree_pose", "pending", None)] * 9)
    # Charged 10 x 30 + 270 = 570, refunded 30: 5.26 % (warning).
    health = get(stack, "/metrics/health-indicators", period="1h")
    assert health["status"] == "critical" and health["period"] == "1h"
    assert [(i["key"], i["value"], i["unit"], i["status"], i["label"], i["action"])
            for i in health["indicators"]] == [
        ("successRate", 90.0, "%", "warning", "Warning", "Investigate errors"),
        ("avgTimePerPose", 61.0, "s", "critical", "Critical", "Investigate bottlenecks"),
        ("queueDepth", 0.0, "jobs", "good", "Healthy", "Normal load"),
        ("refundRate", 5.26, "%", "warning", "Warning", "Check failures"),
    ]
    assert health["indicators"][0]["thresholds"] == "good > 95%, warning 90-95%, critical < 90%"

    result = posegen_status(stack, "--period", "1h")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "overall: CRITICAL" in result.stdout and "Investigate bottlenecks" in result.stdout
    assert "WARNING (Warning)" in result.stdout and "\x1b[" not in result.stdout  # not a terminal: no colours

    # On a terminal the statuses are coloured.
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "status", "--url", stack.base_url, "--period", "1h"],
                               cwd=ROOT, env=stack.env, stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=60) == 1
    os.close(leader)
    assert b"\x1b[31mCRITICAL" in output and b"\x1b[33mWARNING" in output

    # A USER token cannot read them: the command says so and exits 2 (unknown, not "healthy").
    denied = posegen_status(stack, "--token", stack.token("someone", Role.USER))
    assert denied.returncode == 2 and "403" in denied.stderr


def test_status_names_the_redis_it_counted_workers_in(fresh_stack: StackFactory) -> None:
    """An operator whose shell's REDIS_URL is not the stack's sees "0 registered" while workers run: the line
    names the Redis it read, so the mismatch shows. A password in the URL is never printed."""
    stack = fresh_stack(workers=1)
    stack.wait_workers_ready(1)
    same = posegen_status(stack)
    assert f"1 registered now in the Redis this command read, REDIS_URL={stack.redis_url}\n" in same.stdout, (
        same.stdout + same.stderr)

    other_index = claim_redis_db()
    try:
        other = posegen_status(stack, REDIS_URL=redis_url(other_index))
    finally:
        release_redis_db(other_index)
    assert f"0 registered now in the Redis this command read, REDIS_URL={redis_url(other_index)}\n" in other.stdout, (
        other.stdout + other.stderr)

    secret, port = f"pw-{os.getpid()}-{time.monotonic_ns()}", free_port()
    locked = posegen_status(stack, REDIS_URL=f"redis://ops:{secret}@127.0.0.1:{port}/5")
    assert (f"registered now: unknown (REDIS_URL=redis://ops:***@127.0.0.1:{port}/5 is unreachable from here)"
            in locked.stdout), locked.stdout + locked.stderr
    assert secret not in locked.stdout + locked.stderr


def test_queue_depth_indicator_counts_waiting_and_active_jobs(fresh_stack: StackFactory) -> None:
    stack = fresh_stack(workers=0)
    queue = Queue(QUEUE_NAME, connection=Redis.from_url(stack.redis_url))
    with Redis.from_url(stack.redis_url).pipeline() as pipe:
        for n in range(101):
            pipe.rpush(queue.key, f"job-{n}")
        pipe.execute()
    health = get(stack, "/metrics/health-indicators")
    depth = next(i for i in health["indicators"] if i["key"] == "queueDepth")
    assert (depth["value"], depth["status"], depth["action"]) == (101.0, "warning", "Monitor closely")
    assert health["status"] == HealthStatus.WARNING.value
    assert posegen_status(stack).returncode == 0


# --- The real flow: a worker writes, the triggers keep up ---------------------------------------


def test_metrics_follow_real_generations_through_a_worker(fresh_stack: StackFactory) -> None:
    stack = fresh_stack(workers=1, POSEGEN_FAULTS="FLUX_API_ERROR=0.3")
    user = stack.new_user(credits=2_000)
    poses = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]
    ids = [stack.create_generation(user, poses[: 1 + n % 4], prompt=f"p{n}").json()["generationId"] for n in range(8)]
    poor = stack.new_user(credits=10)
    assert stack.create_generation(poor, poses).status_code == 402  # recorded as a CREDIT_ERROR
    for generation_id in ids:
        stack.wait_finished(user, generation_id)
    body = get(stack, "/metrics", period="1h")
    with stack.db() as conn:
        window = Window(datetime.fromisoformat(body["startTime"].replace("Z", "+00:00")),
                        datetime.fromisoformat(body["endTime"].replace("Z", "+00:00")))
        expected = brute_force(conn, window)
        errors = conn.execute("SELECT error_type, count(*) FROM error_events GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
    assert (body["totalGenerations"], body["completedGenerations"], body["failedGenerations"]) == \
        (expected[0], expected[3], expected[4]) == (8, expected[3], 8 - expected[3])
    assert body["activeGenerations"] == 0 and body["totalPosesGenerated"] == expected[6]
    assert (body["totalCreditsSpent"], body["totalCreditsRefunded"]) == (expected[11], expected[12])
    assert body["avgGenerationTime"] == (2 * expected[7] + expected[8]) // (2 * expected[8])  # half up
    assert [(e["errorType"], e["count"]) for e in get(stack, "/metrics/errors")["errors"]] == \
        [tuple(r) for r in errors]
    assert ("CREDIT_ERROR", 1) in [tuple(r) for r in errors]
    top = get(stack, "/metrics/top-users")["users"]
    assert top == [{"userId": user, "generationCount": 8, "totalPoses": expected[6],
                    "successRate": percent(expected[3], 8)}]


# --- Who may ask, and what a bad question gets ----------------------------------------------------


def test_metrics_need_a_token_and_most_need_admin(stack: Stack) -> None:
    for path in ALL_ROUTES:
        assert stack.http.get(path).status_code == 401, path
        assert stack.http.get(path, params={"period": "2h", "limit": 0}).status_code == 401, path
    for path in ADMIN_ROUTES:
        answer = stack.http.get(path, params={"period": "2h"}, headers=stack.headers("u1"))
        assert answer.status_code == 403, (path, answer.text)
        assert "ADMIN" in answer.json()["detail"]
    assert stack.http.get("/metrics/popular-poses", headers=stack.headers("u1")).status_code == 200


@pytest.mark.parametrize(("path", "params", "field", "allowed"), [
    ("/metrics", {"period": "2h"}, "period", "1h, 24h, 7d, 30d"),
    ("/metrics", {"period": ""}, "period", "1h, 24h, 7d, 30d"),
    ("/metrics/health-indicators", {"period": "1d"}, "period", "1h, 24h, 7d, 30d"),
    ("/metrics/errors", {"period": "forever"}, "period", "1h, 24h, 7d, 30d"),
    ("/metrics/top-users", {"limit": 0}, "limit", "1 to 100"),
    ("/metrics/top-users", {"limit": 101}, "limit", "1 to 100"),
    ("/metrics/top-users", {"limit": "ten"}, "limit", "1 to 100"),
    ("/metrics/popular-poses", {"limit": "1.5"}, "limit", "1 to 100"),
    ("/metrics/popular-poses", {"limit": -3}, "limit", "1 to 100"),
])
def test_bad_query_is_422_naming_the_parameter_and_allowed_values(
    stack: Stack, path: str, params: dict[str, Any], field: str, allowed: str
) -> None:
    answer = stack.http.get(path, params=params, headers=stack.headers("ops", Role.ADMIN))
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["fields"] == [field] and body["errorType"] == "VALIDATION_ERROR"
    assert field in body["detail"] and allowed in body["detail"]


def test_openapi_documents_the_metrics_parameters(stack: Stack) -> None:
    schema = stack.http.get(stack.base_url + "/schema/openapi.json").json()
    paths = {p.removeprefix("/api/apps/pose-generator"): v["get"] for p, v in schema["paths"].items()
             if "/metrics" in p and "prometheus" not in p}
    assert set(paths) == {"/metrics", "/metrics/top-users", "/metrics/popular-poses", "/metrics/errors",
                          "/metrics/health-indicators"}
    assert schema["components"]["schemas"]["MetricsPeriod"]["enum"] == ["1h", "24h", "7d", "30d"]
    assert "All time" in paths["/metrics/top-users"]["description"]
    assert "All time unless a period" in paths["/metrics/errors"]["description"]
