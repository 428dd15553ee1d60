"""Admin metrics endpoints at 10,000 and 1,000,000 generations: latency, and that the answers stay exact.

Setup: a scratch database made from nothing (migrate + pose library), a Redis db of its own, and the
API as a subprocess (``python -m app.cli api``). Generations are spread over the last 60 days (so the
30 d window holds about half), 1-4 poses each, about 8 % failed and 4 % of the other poses failed
(each refunded and recorded as an error event), the newest few queued or processing; users are skewed
so some are much busier than others.

* 10,000: loaded by COPY with the triggers on, so the rollups are built by the triggers themselves
  (deltas, folded by the first reads).
* 1,000,000: the next 990,000 loaded by COPY with triggers off (``session_replication_role = replica``),
  then ``metrics_rebuild()`` - the migration's backfill - builds the rollups.

Each endpoint is called 200 times after a warm-up; median and p95 are client-side (HTTP included).
The baseline is the same figure computed by plain SQL over the raw tables (one run), which is also
what every answer is checked against. The database is dropped at the end.
Run: ``.venv/bin/python -m bench.metrics_api [LARGE]`` (LARGE defaults to 1,000,000; a few minutes on 2 cores).
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from app import API_PREFIX
from app.api.auth import Role, mint_token
from app.db.migrate import migrate
from app.domain.metrics import percent
from app.domain.pose_library import LIBRARY
from app.domain.poses import seed_pose_library
from tests.stack import (
    ROOT,
    claim_redis_db,
    create_database,
    drop_database,
    free_port,
    redis_url,
    release_redis_db,
)

SECRET = "bench-secret-" + uuid.uuid4().hex
USERS = 20_000
SPAN = timedelta(days=60)
PRICE = 30
ERROR_TYPES = ["FLUX_API_ERROR"] * 6 + ["TIMEOUT_ERROR"] * 3 + ["STORAGE_ERROR", "NETWORK_ERROR", "CONTROLNET_ERROR"]
REQUESTS = 200
ENDPOINTS: list[tuple[str, dict[str, Any], float]] = [  # path, query, target median ms
    ("/metrics", {"period": "1h"}, 50), ("/metrics", {"period": "24h"}, 50),
    ("/metrics", {"period": "7d"}, 50), ("/metrics", {"period": "30d"}, 50),
    ("/metrics/health-indicators", {"period": "30d"}, 50),
    ("/metrics/top-users", {"limit": 10}, 100), ("/metrics/popular-poses", {"limit": 20}, 100),
    ("/metrics/errors", {}, 100), ("/metrics/errors", {"period": "30d"}, 100),
]


class Seeder:
    """Writes generations with their poses, ledger rows and error events as COPY text, in batches."""

    def __init__(self, now: datetime, seed: int = 7) -> None:
        self.now = now
        self.rnd = random.Random(seed)
        self.pose_ids = [p.pose_id for p in LIBRARY]
        self.next_pose_row = 1
        self.next_ledger_row = 1
        self.next_error_row = 1

    def batches(self, first: int, count: int, batch: int = 100_000) -> Iterator[tuple[str, str, str, str]]:
        for start in range(first, first + count, batch):
            yield self._batch(start, min(batch, first + count - start))

    def _batch(self, first: int, count: int) -> tuple[str, str, str, str]:
        rnd, now = self.rnd, self.now
        generations, poses, ledger, errors = io.StringIO(), io.StringIO(), io.StringIO(), io.StringIO()
        for n in range(first, first + count):
            user = f"user_{int(USERS * rnd.random() ** 3):05d}"
            created = now - SPAN * rnd.random()
            age = now - created
            count_poses = rnd.randint(1, 4)
            status = ("queued" if rnd.random() < 0.5 else "processing") if age < timedelta(minutes=10) else \
                ("failed" if rnd.random() < 0.08 else "completed")
            generation_id = f"gen_{n:09d}"
            slowest = 0
            refunded = 0
            for position in range(count_poses):
                pose_id = self.pose_ids[int(len(self.pose_ids) * rnd.random() ** 2)]
                row = self.next_pose_row
                self.next_pose_row += 1
                outcome = "pending" if status in ("queued", "processing") else \
                    "failed" if status == "failed" or rnd.random() < 0.04 else "completed"
                pose_ms = rnd.randint(4_000, 45_000) if outcome != "pending" else None
                slowest = max(slowest, pose_ms or 0)
                poses.write(f"{row}\t{generation_id}\t{position}\t{pose_id}\t{outcome}\t{_text(pose_ms)}\n")
                if outcome == "failed":
                    when = created + timedelta(milliseconds=pose_ms or 0)
                    refunded += PRICE
                    ledger.write(f"{self.next_ledger_row}\t{user}\trefund\t{PRICE}\t0\t{generation_id}\t{row}\t"
                                 f"{when.isoformat()}\n")
                    self.next_ledger_row += 1
                    errors.write(f"{self.next_error_row}\t{rnd.choice(ERROR_TYPES)}\tWorker\t{user}\t"
                                 f"{generation_id}\t{row}\t{when.isoformat()}\n")
                    self.next_error_row += 1
            duration = slowest + rnd.randint(200, 3_000) if status in ("completed", "failed") else None
            generations.write(f"{generation_id}\t{user}\tbench\t{status}\t{count_poses}\t{PRICE}\t"
                              f"{count_poses * PRICE}\t{refunded}\t{created.isoformat()}\t{_text(duration)}\n")
            ledger.write(f"{self.next_ledger_row}\t{user}\tcharge\t{count_poses * PRICE}\t0\t{generation_id}\t\\N\t"
                         f"{created.isoformat()}\n")
            self.next_ledger_row += 1
        return generations.getvalue(), poses.getvalue(), ledger.getvalue(), errors.getvalue()


def _text(value: int | None) -> str:
    return "\\N" if value is None else str(value)


_COPIES = (
    "COPY generations (id, user_id, prompt, status, poses_count, price_per_pose, credits_charged, credits_refunded,"
    " created_at, duration_ms) FROM STDIN",
    "COPY generation_poses (id, generation_id, position, pose_id, status, duration_ms) FROM STDIN",
    "COPY credit_ledger (id, user_id, kind, amount, balance_after, generation_id, generation_pose_id, created_at)"
    " FROM STDIN",
    "COPY error_events (id, error_type, component, user_id, generation_id, generation_pose_id, occurred_at)"
    " FROM STDIN",
)


def load(url: str, seeder: Seeder, first: int, count: int, *, triggers: bool) -> float:
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        if not triggers:
            conn.execute("SET session_replication_role = replica")
        # With triggers on, transactions of 1,000 generations (the app writes one at a time).
        for batch in seeder.batches(first, count, batch=1_000 if triggers else 100_000):
            for statement, text in zip(_COPIES, batch, strict=True):
                with conn.cursor().copy(statement) as copy:
                    copy.write(text)
        for table in ("generation_poses", "credit_ledger", "error_events"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        if not triggers:
            conn.execute("RESET session_replication_role")
            conn.execute("SELECT metrics_rebuild()")
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - began


_WINDOW_SQL = """
SELECT count(*), count(*) FILTER (WHERE status IN ('queued', 'processing')),
       count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),
       (SELECT count(*) FROM generation_poses p JOIN generations g ON g.id = p.generation_id
         WHERE p.status = 'completed' AND g.created_at >= %(start)s AND g.created_at < %(end)s),
       (SELECT coalesce(sum(amount), 0) FROM credit_ledger
         WHERE kind = 'charge' AND created_at >= %(start)s AND created_at < %(end)s),
       (SELECT coalesce(sum(amount), 0) FROM credit_ledger
         WHERE kind = 'refund' AND created_at >= %(start)s AND created_at < %(end)s),
       coalesce(sum(duration_ms), 0), count(duration_ms)
  FROM generations WHERE created_at >= %(start)s AND created_at < %(end)s
"""


def check_against_raw_sql(conn: psycopg.Connection[Any], path: str, query: dict[str, Any], answer: dict[str, Any],
                          asked: tuple[datetime, datetime]) -> tuple[float, bool]:
    """The same figures by plain SQL over the raw tables: (seconds it took, whether the API's answer agrees)."""
    began = time.perf_counter()
    if path in ("/metrics", "/metrics/health-indicators"):
        row = conn.execute(_WINDOW_SQL, {"start": answer["startTime"], "end": answer["endTime"]}).fetchone()
        total, active, completed, failed, delivered, charged, refunded, duration_sum, durations = (
            int(v) for v in row or ())
        seconds = time.perf_counter() - began
        if path == "/metrics":
            average = (2 * duration_sum + durations) // (2 * durations) if durations else 0
            return seconds, (answer["totalGenerations"], answer["activeGenerations"], answer["completedGenerations"],
                             answer["failedGenerations"], answer["totalPosesGenerated"], answer["totalCreditsSpent"],
                             answer["totalCreditsRefunded"], answer["avgGenerationTime"]) == (
                total, active, completed, failed, delivered, charged, refunded, average)
        values = {i["key"]: i["value"] for i in answer["indicators"]}
        return seconds, (values["successRate"], values["refundRate"]) == (
            percent(completed, completed + failed) if completed + failed else None,
            percent(refunded, charged) if charged else None)
    if path == "/metrics/top-users":
        expected: list[tuple[Any, ...]] = [tuple(r) for r in conn.execute(
            "SELECT user_id, count(*) FROM generations GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %s", (query["limit"],))]
        got = [(u["userId"], u["generationCount"]) for u in answer["users"]]
    elif path == "/metrics/popular-poses":
        expected = [tuple(r) for r in conn.execute(
            "SELECT pose_id, count(*) FROM generation_poses GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %s",
            (query["limit"],))]
        got = [(p["poseId"], p["usageCount"]) for p in answer["poses"]]
    else:
        # The errors answer does not echo its window: it ended between the request's send and receipt,
        # so it must equal the raw count over the window ending at one of the two.
        sql = ("SELECT error_type, count(*) FROM error_events WHERE occurred_at >= %s AND occurred_at < %s"
               " GROUP BY 1 ORDER BY 2 DESC, 1")
        got = [(e["errorType"], e["count"]) for e in answer["errors"]]
        candidates = []
        for end in asked:
            bounds = (end - timedelta(days=30), end) if query.get("period") == "30d" else ("-infinity", "infinity")
            candidates.append([tuple(r) for r in conn.execute(sql, bounds)])
        expected = got if got in candidates else candidates[0]
    return time.perf_counter() - began, got == expected


@contextmanager
def api_process(database_url: str, redis: str) -> Iterator[httpx.Client]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis, "JWT_SECRET": SECRET,
           "LOG_LEVEL": "WARN", "POSEGEN_RATE_LIMIT_PER_MINUTE": "0"}
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "api", "--port", str(port)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    token = mint_token(SECRET, "bench-admin", Role.ADMIN, 3600)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}{API_PREFIX}", timeout=60,
                          headers={"Authorization": f"Bearer {token}"})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/health").status_code in (200, 503):
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=15)


def measure(client: httpx.Client, conn: psycopg.Connection[Any]) -> dict[str, tuple[float, float, float, bool]]:
    """Per endpoint: (median ms, p95 ms, raw-SQL baseline ms, answer exact)."""
    figures = {}
    for path, query, _ in ENDPOINTS:
        for _ in range(10):
            client.get(path, params=query).raise_for_status()
        timings = []
        for _ in range(REQUESTS):
            began = time.perf_counter()
            answer = client.get(path, params=query)
            timings.append((time.perf_counter() - began) * 1000)
            answer.raise_for_status()
        sent = datetime.now(UTC)
        checked = client.get(path, params=query).json()
        received = datetime.now(UTC)
        raw_seconds, exact = check_against_raw_sql(conn, path, query, checked, (sent, received))
        timings.sort()
        figures[_label(path, query)] = (statistics.median(timings), timings[int(0.95 * len(timings)) - 1],
                                        raw_seconds * 1000, exact)
    return figures


def _label(path: str, query: dict[str, Any]) -> str:
    return path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


async def _seed_poses(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await seed_pose_library(conn)


def _short(count: int) -> str:
    return f"{count // 1_000_000}M" if count % 1_000_000 == 0 else f"{count // 1000}k"


def main(small: int = 10_000, large: int = 1_000_000) -> None:
    name = f"posegen_bench_metrics_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    redis_index = claim_redis_db()
    now = datetime.now(UTC)
    results: dict[int, dict[str, tuple[float, float, float, bool]]] = {}
    notes = []
    try:
        migrate(url)
        asyncio.run(_seed_poses(url))
        with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO credit_accounts (user_id, balance) VALUES (%s, 0)",
                            [(f"user_{n:05d}",) for n in range(USERS)])
        seeder = Seeder(now)
        seconds = load(url, seeder, 0, small, triggers=True)
        with psycopg.connect(url, autocommit=True) as conn:
            pending = conn.execute("SELECT (SELECT count(*) FROM metrics_generation_deltas)"
                                   " + (SELECT count(*) FROM metrics_pose_deltas)"
                                   " + (SELECT count(*) FROM metrics_credit_deltas)"
                                   " + (SELECT count(*) FROM metrics_error_deltas)").fetchone()
        notes.append(f"{small:,}: COPY with all triggers on (the bookkeeping of 003-010), 1,000 generations per"
                     f" transaction, {seconds:.1f} s; {pending[0] if pending else 0} metric deltas left unfolded"
                     " (the first reads fold them; answers are exact either way)")
        for size in (small, large):
            if size == large:
                seconds = load(url, seeder, small, large - small, triggers=False)
                notes.append(f"{large:,}: COPY of {large - small:,} more with triggers off + metrics_rebuild()"
                             f" + VACUUM ANALYZE {seconds:.1f} s")
            with psycopg.connect(url, autocommit=True) as conn, \
                    api_process(url, redis_url(redis_index)) as client:
                counts = conn.execute("SELECT (SELECT count(*) FROM generations), (SELECT count(*) FROM"
                                      " generation_poses), (SELECT count(*) FROM credit_ledger),"
                                      " (SELECT count(*) FROM error_events)").fetchone()
                notes.append(f"{size:,}: rows generations/poses/ledger/errors = "
                             + "/".join(f"{c:,}" for c in counts or ()))
                results[size] = measure(client, conn)
    finally:
        release_redis_db(redis_index)
        drop_database(name)

    print("admin metrics API, 2-core machine, sequential requests over HTTP keep-alive, "
          f"{REQUESTS} per endpoint after warm-up; ms")
    for note in notes:
        print(f"  {note}")
    a, b = _short(small), _short(large)
    header = f"{'endpoint':<42}{'target':>8}{a + ' med':>9}{a + ' p95':>9}{b + ' med':>9}{b + ' p95':>9}" \
             f"{b + ' raw SQL':>12}  exact"
    print(header)
    for path, query, target in ENDPOINTS:
        label = _label(path, query)
        little, big = results[small][label], results[large][label]
        exact = "yes" if little[3] and big[3] else "NO"
        print(f"{label:<42}{'<' + str(int(target)):>8}{little[0]:>9.1f}{little[1]:>9.1f}{big[0]:>9.1f}"
              f"{big[1]:>9.1f}{big[2]:>12.0f}  {exact}")


if __name__ == "__main__":
    main(large=int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
