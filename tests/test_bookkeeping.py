"""One bookkeeping family: the exporter's figures come from the deltas the admin metrics use, exactly.

Generations go through the create function and the lifecycle the worker and the reaper drive (as plain
SQL); the exporter's collector then reads the same figures as the rows say, whether the deltas are still
unfolded, folded, or rebuilt from scratch.
"""

from __future__ import annotations

import json
import random
import time
import uuid

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.collectors import DomainCollector
from tests.stack import Stack
from tests.support.exporter import (
    assert_exporter_matches_database,
    exporter_fixture,  # noqa: F401 - the start_exporter fixture
    parse,
    value,
)
from tests.support.exporter import scrape as scrape_exporter

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]


def scrape(stack: Stack) -> dict:  # type: ignore[type-arg]
    registry = CollectorRegistry()
    collector = DomainCollector(stack.database_url)
    registry.register(collector)
    try:
        return parse(generate_latest(registry).decode())
    finally:
        collector.close()


def test_exporter_figures_stay_exact_unfolded_folded_and_rebuilt(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=0, api=False)
    rnd = random.Random(19)
    with stack.db() as conn:
        conn.execute("INSERT INTO credit_accounts (user_id, balance) VALUES ('u1', 10000000), ('u2', 10000000)")
        items = [{"id": f"g{uuid.uuid4().hex[:8]}", "userId": rnd.choice(["u1", "u2"]), "prompt": "p",
                  "poseIds": rnd.sample(POSES, rnd.randint(1, 4))} for _ in range(40)]
        for start in range(0, len(items), 16):
            conn.execute("SELECT count(*) FROM posegen_create_generations(%s::jsonb, 30, 60)",
                         (json.dumps(items[start:start + 16]),))
        for item in items:
            fate = rnd.random()
            if fate < 0.15:
                continue
            conn.execute("UPDATE generations SET status = 'processing' WHERE id = %s", (item["id"],))
            if fate < 0.3:
                conn.execute("UPDATE generations SET status = 'queued', attempt = attempt + 1 WHERE id = %s",
                             (item["id"],))
                continue
            delivered = 0
            for (pose_row,) in conn.execute("SELECT id FROM generation_poses WHERE generation_id = %s",
                                            (item["id"],)).fetchall():
                timings = [rnd.choice([None, rnd.randint(1, 400_000)]) for _ in range(4)]
                if rnd.random() < 0.7:
                    delivered += 1
                    conn.execute("UPDATE generation_poses SET status = 'completed', provider_ms = %s, upload_ms = %s,"
                                 " queue_wait_ms = %s, duration_ms = %s WHERE id = %s", (*timings, pose_row))
                else:
                    conn.execute("UPDATE generation_poses SET status = 'failed', provider_ms = %s, upload_ms = %s,"
                                 " queue_wait_ms = %s, duration_ms = %s WHERE id = %s", (*timings, pose_row))
                    conn.execute("INSERT INTO credit_ledger (user_id, kind, amount, balance_after, generation_id,"
                                 " generation_pose_id) VALUES (%s, 'refund', 30, 0, %s, %s)",
                                 (item["userId"], item["id"], pose_row))
                    conn.execute("INSERT INTO error_events (error_type, component, generation_id)"
                                 " VALUES ('FLUX_API_ERROR', 'FLUX', %s)", (item["id"],))
            conn.execute("UPDATE generations SET status = %s, duration_ms = %s, finished_at = now()"
                         " - make_interval(secs => %s) WHERE id = %s",
                         ("completed" if delivered else "failed", rnd.randint(1_000, 400_000), rnd.random() * 100,
                          item["id"]))
        (unfolded,) = conn.execute("SELECT count(*) FROM metrics_histogram_deltas").fetchone()
        assert unfolded > 0, "the figures below must be read with deltas not folded yet"
        assert_exporter_matches_database(scrape(stack), conn)
        conn.execute("SELECT metrics_fold(1000000)")
        assert conn.execute("SELECT count(*) FROM metrics_histogram_deltas").fetchone()[0] == 0
        folded = scrape(stack)
        assert_exporter_matches_database(folded, conn)
        conn.execute("SELECT metrics_rebuild()")
        assert scrape(stack) == folded


ROLLUPS = ["metrics_generation_hourly", "metrics_user_totals", "metrics_pose_usage", "metrics_credit_hourly",
           "metrics_error_hourly", "metrics_error_totals", "metrics_exporter_totals", "metrics_histogram_totals"]


def rollups(conn) -> dict[str, list[tuple]]:  # type: ignore[no-untyped-def,type-arg]
    """Every rollup, fully folded, without rows that count nothing (a delta that came and went)."""
    conn.execute("SELECT metrics_fold(1000000)")
    return {table: [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                    if any(v for v in r if isinstance(v, int))] for table in ROLLUPS}


def test_a_batch_counts_its_creates_once_at_the_end_and_hands_counting_back(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    """The batch create counts its creates itself (its items' insert triggers skip): each outcome counts
    what it wrote, inserts after the batch in the same transaction are counted by their triggers again,
    and a batch rolled back counts nothing."""
    stack: Stack = fresh_stack(workers=0, api=False)
    with stack.db() as conn:
        conn.execute("INSERT INTO credit_accounts (user_id, balance) VALUES ('rich', 10000000), ('poor', 40)")
        first = {"id": "b_first", "userId": "rich", "prompt": "p", "poseIds": POSES, "idempotencyKey": "k1"}
        conn.execute("SELECT count(*) FROM posegen_create_generations(%s::jsonb, 30, 60)", (json.dumps([first]),))
        items = [
            {"id": "b_created_1", "userId": "rich", "prompt": "p", "poseIds": POSES[:2]},
            {"id": "b_again", "userId": "rich", "prompt": "p", "poseIds": POSES, "idempotencyKey": "k1"},
            {"id": "b_unknown", "userId": "rich", "prompt": "p", "poseIds": ["pose_nowhere"]},
            {"id": "b_poor", "userId": "poor", "prompt": "p", "poseIds": POSES[:2]},  # 60 credits > 40
            {"id": "b_first", "userId": "rich", "prompt": "p", "poseIds": POSES[:1]},  # id taken: an error
            {"id": "b_created_2", "userId": "poor", "prompt": "p", "poseIds": POSES[3:]},
        ]
        with conn.transaction():
            outcomes = conn.execute("SELECT item, outcome FROM posegen_create_generations(%s::jsonb, 30, 60)"
                                    " ORDER BY item", (json.dumps(items),)).fetchall()
            assert [o for _, o in outcomes] == ["created", "existing", "unknown_poses", "error", "error", "created"]
            assert conn.execute("SELECT current_setting('posegen.metrics_counted_by_caller', true)").fetchone()[0] \
                in ("", None)
            # The same transaction goes on writing: its inserts are counted by their triggers again.
            conn.execute("INSERT INTO generations (id, user_id, prompt, status, poses_count, price_per_pose,"
                         " credits_charged, duration_ms, finished_at) VALUES"
                         " ('b_direct_1', 'rich', 'p', 'completed', 2, 30, 60, 4200, now()),"
                         " ('b_direct_2', 'poor', 'p', 'failed', 1, 30, 30, 900, now() - interval '1 minute')")
            conn.execute("INSERT INTO generation_poses (generation_id, position, pose_id, status, provider_ms,"
                         " upload_ms, queue_wait_ms, duration_ms) VALUES"
                         " ('b_direct_1', 0, %s, 'completed', 2000, 100, 30, 2200),"
                         " ('b_direct_1', 1, %s, 'completed', 1800, NULL, 20, 2000),"
                         " ('b_direct_2', 0, %s, 'failed', NULL, NULL, 10, 800)", (POSES[0], POSES[1], POSES[2]))
            conn.execute("INSERT INTO credit_ledger (user_id, kind, amount, balance_after, generation_id) VALUES"
                         " ('rich', 'charge', 60, 100, 'b_direct_1'), ('poor', 'refund', 30, 70, 'b_direct_2')")
        rolled_back = [{"id": "b_rolled_back", "userId": "rich", "prompt": "p", "poseIds": POSES}]
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM posegen_create_generations(%s::jsonb, 30, 60)", (json.dumps(rolled_back),))
        conn.execute("ROLLBACK")

        assert conn.execute("SELECT count(*) FROM generations").fetchone()[0] == 5
        assert_exporter_matches_database(scrape(stack), conn)
        counted = rollups(conn)
        assert dict(counted["metrics_user_totals"] and [(r[0], r[1]) for r in counted["metrics_user_totals"]]) == \
            {"rich": 3, "poor": 2}
        conn.execute("SELECT metrics_rebuild()")
        assert rollups(conn) == counted


DELTA_TABLES = ["metrics_generation_deltas", "metrics_pose_deltas", "metrics_credit_deltas", "metrics_error_deltas",
                "metrics_histogram_deltas", "metrics_exporter_deltas"]


def wait_deltas_folded(conn, seconds: float) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Rows left in each delta table once all are empty, or after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        left = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in DELTA_TABLES}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_workers_fold_the_deltas_on_their_timer_with_no_reader(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    """Nothing folds at commit: with no exporter and no admin read, the workers' timer (the reaper's pass,
    every 0.5 s here) still moves every delta into the rollups, which then hold the figures."""
    stack: Stack = fresh_stack(workers=1, POSEGEN_FAULTS="FLUX_API_ERROR=0.5")
    user = stack.new_user(credits=10_000)
    ids = [stack.create_generation(user, POSES[:2]).json()["generationId"] for _ in range(6)]
    for generation_id in ids:
        stack.wait_finished(user, generation_id)
    with stack.db() as conn:
        left = wait_deltas_folded(conn, 20)
        assert not any(left.values()), f"deltas not folded 20 s after the last write: {left}"
        (created,) = conn.execute("SELECT value FROM metrics_exporter_totals"
                                  " WHERE metric = 'generations' AND label = 'created'").fetchone()
        assert created == conn.execute("SELECT count(*) FROM generations").fetchone()[0] >= 6


def test_the_exporter_folds_the_deltas_when_no_worker_runs(fresh_stack, start_exporter) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """With no worker (an outage, scale to zero), creates still add deltas; the exporter's folder thread keeps
    them folded, so a scrape's read does not grow with the time since the last worker."""
    stack: Stack = fresh_stack(workers=0, api=False)
    _process, port = start_exporter(stack)
    with stack.db() as conn:
        conn.execute("INSERT INTO credit_accounts (user_id, balance)"
                     " SELECT 'fold_' || i, 1000000 FROM generate_series(0, 47) AS i")
        for batch in range(3):
            items = [{"id": f"f{batch}_{i}", "userId": f"fold_{batch * 16 + i}", "prompt": "p", "poseIds": POSES}
                     for i in range(16)]
            conn.execute("SELECT count(*) FROM posegen_create_generations(%s::jsonb, 30, 60)", (json.dumps(items),))
        assert conn.execute("SELECT count(*) FROM metrics_generation_deltas").fetchone()[0] == 48
        left = wait_deltas_folded(conn, 15)  # the folder runs every 5 s
        assert not any(left.values()), f"deltas not folded 15 s after the writes, no worker running: {left}"
        samples = parse(scrape_exporter(port).text)
        assert value(samples, "pose_generations_total", status="created") == 48
        assert value(samples, "pose_poses_pending") == 48 * len(POSES)
