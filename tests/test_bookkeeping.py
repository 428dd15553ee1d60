"""One bookkeeping family: the exporter's figures come from the deltas the admin metrics use, exactly.

Generations go through the create function and the lifecycle the worker and the reaper drive (as plain
SQL); the exporter's collector then reads the same figures as the rows say, whether the deltas are still
unfolded, folded, or rebuilt from scratch.
"""

from __future__ import annotations

import json
import random
import uuid

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.collectors import DomainCollector
from tests.stack import Stack
from tests.test_exporter import assert_exporter_matches_database, parse

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
