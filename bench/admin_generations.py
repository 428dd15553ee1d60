"""``GET /admin/generations`` at 1,000,000 generations: a filtered page (50 rows with their attempts), per filter.

Setup as in ``bench/metrics_api.py`` (whose :class:`~bench.metrics_api.Seeder` this reuses): a scratch database,
generations spread over 60 days, ~8 % failed, loaded by COPY with triggers off; then one UPDATE gives finished
generations their ``finished_at`` and the failed ones (and completed ones with refunded poses) an error type,
as the worker would have. The API runs as a subprocess; each query is asked 200 times after a warm-up, and
each page is checked against plain SQL over the raw table (same ids, same order).

Beside each HTTP figure: the median time PostgreSQL spends on the page's two statements (the page and its
attempts, run in-process over one connection), which the load of other processes on the machine disturbs far
less than a round trip through the API does; the load average is printed with the figures.
Baseline: the same requests with migration 009's search indexes dropped (what a filter costs without them).
Run: ``.venv/bin/python -m bench.admin_generations [SIZE]`` (SIZE defaults to 1,000,000).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from psycopg import AsyncConnection

from app.db.migrate import migrate
from app.domain.generation_search import GenerationFilter, search_generations
from bench.metrics_api import USERS, Seeder, _seed_poses, api_process, load
from tests.stack import claim_redis_db, create_database, drop_database, redis_url, release_redis_db

REQUESTS = 200
TARGET_MS = 20.0
PAGE = 50
SEARCH_INDEXES = ("generations_failed_created", "generations_error_type_created", "generations_finished",
                  "generations_failed_finished")

_ERRORS_SQL = """
UPDATE generations SET
    finished_at = created_at + make_interval(secs => duration_ms / 1000.0),
    error_type = CASE WHEN status = 'failed' OR credits_refunded > 0
                      THEN (ARRAY['FLUX_API_ERROR', 'FLUX_API_ERROR', 'FLUX_API_ERROR', 'TIMEOUT_ERROR',
                                  'TIMEOUT_ERROR', 'STORAGE_ERROR', 'NETWORK_ERROR'])[1 + abs(hashtext(id)) % 7]
                 END
 WHERE status IN ('completed', 'failed')
"""


def queries(now: datetime) -> list[tuple[str, dict[str, Any]]]:
    day = timedelta(days=1)
    return [
        ("failed, newest first", {"status": "failed"}),
        ("failed + FLUX_API_ERROR", {"status": "failed", "errorType": "FLUX_API_ERROR"}),
        ("errorType=TIMEOUT_ERROR", {"errorType": "TIMEOUT_ERROR"}),
        ("busiest user", {"userId": "user_00000"}),
        ("a quiet user, failed", {"userId": "user_19000", "status": "failed"}),
        ("created in one day, 20 d ago", {"createdFrom": (now - 20 * day).isoformat(),
                                          "createdTo": (now - 19 * day).isoformat()}),
        ("failed, finished in one day", {"status": "failed", "finishedFrom": (now - 10 * day).isoformat(),
                                         "finishedTo": (now - 9 * day).isoformat()}),
        ("failed, page 2 (cursor)", {"status": "failed", "cursor": "page2"}),
        ("with failed poses", {"hasFailedPoses": "true"}),
        ("a quiet user, with failed poses", {"userId": "user_19000", "hasFailedPoses": "true"}),
    ]


def _expected_ids(conn: psycopg.Connection[Any], query: dict[str, Any], after: tuple[Any, str] | None) -> list[str]:
    """The page by plain SQL: every filter as a predicate, newest first."""
    clauses, params = ["TRUE"], []
    for key, column, op in (("status", "status", "="), ("errorType", "error_type", "="), ("userId", "user_id", "="),
                            ("createdFrom", "created_at", ">="), ("createdTo", "created_at", "<"),
                            ("finishedFrom", "finished_at", ">="), ("finishedTo", "finished_at", "<")):
        if key in query:
            clauses.append(f"{column} {op} %s")
            params.append(query[key])
    if query.get("hasFailedPoses") == "true":  # finished, with a failed pose: said without error_type
        clauses.append("status IN ('completed', 'failed')"
                       " AND id IN (SELECT generation_id FROM generation_poses WHERE status = 'failed')")
    if after is not None:
        clauses.append("(created_at, id) < (%s, %s)")
        params.extend(after)
    rows = conn.execute(f"SELECT id FROM generations WHERE {' AND '.join(clauses)}"
                        " ORDER BY created_at DESC, id DESC LIMIT %s", [*params, PAGE]).fetchall()
    return [r[0] for r in rows]


async def _database_ms(url: str, query: dict[str, Any], after_cursor: str | None) -> float:
    """Median ms of the page's statements (search + attempts) in-process, prepared as the API's are."""
    wanted = GenerationFilter(**{field: (datetime.fromisoformat(query[key]) if "From" in key or "To" in key
                                         else query[key] == "true" if key == "hasFailedPoses"
                                         else query[key]) for key, field in _FIELDS.items() if key in query})
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        timings = []
        for n in range(60):
            began = time.perf_counter()
            await search_generations(conn, wanted, limit=PAGE, cursor=after_cursor)
            if n >= 10:
                timings.append((time.perf_counter() - began) * 1000)
    return statistics.median(timings)


_FIELDS = {"status": "status", "errorType": "error_type", "userId": "user_id", "createdFrom": "created_from",
           "createdTo": "created_to", "finishedFrom": "finished_from", "finishedTo": "finished_to",
           "hasFailedPoses": "has_failed_poses"}


def measure(
    client: httpx.Client, conn: psycopg.Connection[Any], now: datetime, url: str
) -> dict[str, tuple[float, float, int, bool, float]]:
    """Per query: (median ms, p95 ms, rows on the page, page equals plain SQL, database median ms)."""
    figures = {}
    for label, query in queries(now):
        params = {**query, "limit": PAGE}
        after = None
        if query.get("cursor") == "page2":
            first = client.get("/admin/generations", params={**params, "cursor": None}).json()
            params["cursor"] = first["nextCursor"]
            last = first["generations"][-1]
            after = (datetime.fromisoformat(last["createdAt"].replace("Z", "+00:00")), last["generationId"])
            query = {k: v for k, v in query.items() if k != "cursor"}
        for _ in range(10):
            client.get("/admin/generations", params=params).raise_for_status()
        timings = []
        for _ in range(REQUESTS):
            began = time.perf_counter()
            answer = client.get("/admin/generations", params=params)
            timings.append((time.perf_counter() - began) * 1000)
            answer.raise_for_status()
        page = [g["generationId"] for g in answer.json()["generations"]]
        timings.sort()
        # The API's createdAt has milliseconds; compare the page by ids, and the cursor page by what follows
        # the first page's last row.
        exact = page == _expected_ids(conn, query, _precise(conn, after) if after else None)
        database = asyncio.run(_database_ms(url, query, params.get("cursor")))
        figures[label] = (statistics.median(timings), timings[int(0.95 * len(timings)) - 1], len(page), exact,
                          database)
    return figures


def _precise(conn: psycopg.Connection[Any], after: tuple[Any, str]) -> tuple[Any, str]:
    row = conn.execute("SELECT created_at FROM generations WHERE id = %s", (after[1],)).fetchone()
    return (row[0] if row else after[0]), after[1]


def main(size: int = 1_000_000) -> None:
    name = f"posegen_bench_admin_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    redis_index = claim_redis_db()
    now = datetime.now(UTC)
    notes = []
    try:
        migrate(url)
        asyncio.run(_seed_poses(url))
        with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO credit_accounts (user_id, balance) VALUES (%s, 0)",
                            [(f"user_{n:05d}",) for n in range(USERS)])
        seconds = load(url, Seeder(now), 0, size, triggers=False)
        with psycopg.connect(url, autocommit=True) as conn:
            began = time.perf_counter()
            conn.execute("SET session_replication_role = replica")
            conn.execute(_ERRORS_SQL)
            conn.execute("RESET session_replication_role")
            conn.execute("VACUUM ANALYZE generations")
            counts = conn.execute("SELECT count(*), count(*) FILTER (WHERE status = 'failed'),"
                                  " count(error_type) FROM generations").fetchone() or (0, 0, 0)
            notes.append(f"{size:,} generations ({counts[1]:,} failed, {counts[2]:,} with an error type): COPY"
                         f" {seconds:.1f} s, finish/error UPDATE + VACUUM {time.perf_counter() - began:.1f} s")
            with api_process(url, redis_url(redis_index)) as client:
                notes.append(f"load average before: {os.getloadavg()[0]:.1f}")
                indexed = measure(client, conn, now, url)
                notes.append(f"load average after the indexed run: {os.getloadavg()[0]:.1f}")
                for index in SEARCH_INDEXES:
                    conn.execute(f"DROP INDEX {index}")
                conn.execute("ANALYZE generations")
                bare = measure(client, conn, now, url)
    finally:
        release_redis_db(redis_index)
        drop_database(name)

    print(f"GET /admin/generations, {PAGE}-row page with attempts, 2-core machine, sequential requests over"
          f" HTTP keep-alive, {REQUESTS} per query after warm-up; ms")
    for note in notes:
        print(f"  {note}")
    print(f"{'filter':<34}{'target':>8}{'median':>9}{'p95':>9}{'rows':>6}{'in db':>8}{'no 009 idx':>12}"
          f"{'in db':>8}  exact")
    for label, _ in queries(now):
        median, p95, rows, exact, database = indexed[label]
        print(f"{label:<34}{'<' + str(int(TARGET_MS)):>8}{median:>9.1f}{p95:>9.1f}{rows:>6}{database:>8.1f}"
              f"{bare[label][0]:>12.1f}{bare[label][4]:>8.1f}  {'yes' if exact and bare[label][3] else 'NO'}")
    worst = max(m for m, *_ in indexed.values())
    print(f"slowest filtered page: median {worst:.1f} ms (target {TARGET_MS:.0f} ms)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
