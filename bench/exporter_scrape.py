"""Exporter scrape time at 10,000 and 1,000,000 generations, with 100,000 jobs waiting in Redis.

Setup: a scratch database made from nothing (migrate + pose library) and a Redis db of its own.
Generations are spread over 60 days, 1-3 poses each, ~90 % completed, ~8 % failed (every pose failed),
~1 % queued and ~1 % processing (poses pending); ~5 % of the poses of completed generations failed.
Every failed pose has its refund and its error event, every generation its charge.

* 10,000: loaded by COPY with the triggers on, so the exporter's counters are built by the triggers (their
  deltas then folded, as a running system would have).
* 1,000,000: the next 990,000 loaded by COPY with triggers off (``session_replication_role = replica``),
  then ``metrics_rebuild()`` - the migration's backfill - recomputes the counters.
* Redis: 100,000 job ids RPUSHed onto the queue in pipelines, each with a minimal job hash.

At each size our exporter (``python -m app.cli exporter``) is started fresh and scraped 200 times after
a warm-up; median and p95 are client-side (HTTP included), "pg"/"redis" are the exporter's own
``pose_exporter_scrape_duration_seconds`` medians. Its figures are checked against plain SQL over the
raw tables, whose time is the "scan" baseline: what an exporter that scans history would pay.
The other baseline is the ``rq-exporter`` package scraping the same Redis: found on this venv (then it
runs on our rq 3), else on PATH, else as ``$RQ_EXPORTER_BIN``. It pins ``rq<3``, so installing it into
this venv would downgrade rq; a side venv keeps it apart::

    python3 -m venv /tmp/rqx && /tmp/rqx/bin/pip install rq-exporter && export RQ_EXPORTER_BIN=/tmp/rqx/bin/rq-exporter

The database and the Redis db are dropped/flushed at the end.
Run: ``.venv/bin/python -m bench.exporter_scrape [--large 1000000] [--jobs 100000] [--scrapes 200]``
(``--quick``: 100,000 generations, 20,000 jobs, 100 scrapes).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import os
import random
import shutil
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
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.utils import utcformat

from app import QUEUE_NAME
from app.db.migrate import migrate
from app.domain.pose_library import LIBRARY
from app.domain.poses import seed_pose_library
from app.errors import ErrorType
from tests.stack import ROOT, claim_redis_db, create_database, drop_database, free_port, redis_url, release_redis_db

USERS = 5_000
SPAN = timedelta(days=60)
PRICE = 30
ERROR_TYPES = [e.value for e in ErrorType]
TARGET_MEDIAN_MS = 20.0
TARGET_GROWTH = 1.3


class Seeder:
    """Generations with their poses, ledger rows and error events, as COPY text in batches."""

    def __init__(self, now: datetime, seed: int = 11) -> None:
        self.now = now
        self.rnd = random.Random(seed)
        self.pose_ids = [p.pose_id for p in LIBRARY]
        self.next_pose_row = 1

    def batches(self, first: int, count: int, batch: int) -> Iterator[tuple[str, str, str, str]]:
        for start in range(first, first + count, batch):
            yield self._batch(start, min(batch, first + count - start))

    def _batch(self, first: int, count: int) -> tuple[str, str, str, str]:
        rnd = self.rnd
        generations, poses, ledger, errors = io.StringIO(), io.StringIO(), io.StringIO(), io.StringIO()
        for n in range(first, first + count):
            user = f"bench_user_{rnd.randrange(USERS)}"
            created = self.now - SPAN * rnd.random()
            draw = rnd.random()
            status = "queued" if draw < 0.01 else "processing" if draw < 0.02 else "failed" if draw < 0.10 \
                else "completed"
            generation_id = f"gen_bench_{n:09d}"
            count_poses = rnd.randint(1, 3)
            slowest, refunded = 0, 0
            for position in range(count_poses):
                row = self.next_pose_row
                self.next_pose_row += 1
                outcome = "pending" if status in ("queued", "processing") else \
                    "failed" if status == "failed" or (position > 0 and rnd.random() < 0.05) else "completed"
                if outcome == "pending":
                    poses.write(f"{row}\t{generation_id}\t{position}\t{rnd.choice(self.pose_ids)}\tpending"
                                "\t\\N\t\\N\t\\N\t\\N\t\\N\n")
                    continue
                wait, provider, upload = rnd.randint(0, 8_000), rnd.randint(800, 40_000), rnd.randint(30, 3_000)
                total = provider + upload + rnd.randint(5, 200)
                slowest = max(slowest, wait + total)
                finished = created + timedelta(milliseconds=wait + total)
                poses.write(f"{row}\t{generation_id}\t{position}\t{rnd.choice(self.pose_ids)}\t{outcome}\t{wait}"
                            f"\t{provider}\t{upload}\t{total}\t{finished.isoformat()}\n")
                if outcome == "failed":
                    refunded += PRICE
                    ledger.write(f"{user}\trefund\t{PRICE}\t0\t{generation_id}\t{row}\t{finished.isoformat()}\n")
                    errors.write(f"{rnd.choice(ERROR_TYPES)}\tWorker\t{user}\t{generation_id}\t{row}"
                                 f"\t{finished.isoformat()}\n")
            if status in ("completed", "failed"):
                duration = slowest + rnd.randint(50, 2_000)
                finished_at = (created + timedelta(milliseconds=duration)).isoformat()
                ends = f"{finished_at}\t{duration}"
            else:
                ends = "\\N\t\\N"
            generations.write(f"{generation_id}\t{user}\tbench\t{status}\t{count_poses}\t{PRICE}\t"
                              f"{count_poses * PRICE}\t{refunded}\t{created.isoformat()}\t{ends}\n")
            ledger.write(f"{user}\tcharge\t{count_poses * PRICE}\t0\t{generation_id}\t\\N\t{created.isoformat()}\n")
        return generations.getvalue(), poses.getvalue(), ledger.getvalue(), errors.getvalue()


_COPIES = (
    "COPY generations (id, user_id, prompt, status, poses_count, price_per_pose, credits_charged, credits_refunded,"
    " created_at, finished_at, duration_ms) FROM STDIN",
    "COPY generation_poses (id, generation_id, position, pose_id, status, queue_wait_ms, provider_ms, upload_ms,"
    " duration_ms, finished_at) FROM STDIN",
    "COPY credit_ledger (user_id, kind, amount, balance_after, generation_id, generation_pose_id, created_at)"
    " FROM STDIN",
    "COPY error_events (error_type, component, user_id, generation_id, generation_pose_id, occurred_at) FROM STDIN",
)


def prepare(url: str) -> None:
    migrate(url)

    async def seed() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await seed_pose_library(conn)

    asyncio.run(seed())
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor().copy(
            "COPY credit_accounts (user_id, balance) FROM STDIN") as copy:
        copy.write("".join(f"bench_user_{n}\t1000000000\n" for n in range(USERS)))


def load(url: str, seeder: Seeder, first: int, count: int, *, triggers: bool) -> tuple[float, float]:
    """COPY ``count`` generations; with triggers off, rebuild the exporter's counters afterwards.

    Returns (seconds in all, seconds of the rebuild).
    """
    began = time.perf_counter()
    rebuild = 0.0
    with psycopg.connect(url, autocommit=True) as conn:
        if not triggers:
            conn.execute("SET session_replication_role = replica")
        for batch in seeder.batches(first, count, batch=1_000 if triggers else 100_000):
            with conn.transaction():
                for statement, text in zip(_COPIES, batch, strict=True):
                    with conn.cursor().copy(statement) as copy:
                        copy.write(text)
        conn.execute("SELECT setval('generation_poses_id_seq', (SELECT max(id) FROM generation_poses))")
        if not triggers:
            conn.execute("RESET session_replication_role")
            rebuild_began = time.perf_counter()
            conn.execute("SELECT metrics_rebuild()")
            rebuild = time.perf_counter() - rebuild_began
        else:
            # Caught up, as a running system is: the deltas of the load folded (the workers' timer, admin
            # reads and scrapes fold as they go; none ran during this load).
            conn.execute("SELECT metrics_fold(100000000)")
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - began, rebuild


def fill_queue(redis: Redis, jobs: int) -> float:
    """RPUSH ``jobs`` job ids with minimal job hashes, the oldest enqueued a minute ago."""
    began = time.perf_counter()
    queue = Queue(QUEUE_NAME, connection=redis)
    enqueued = utcformat(datetime.now(UTC) - timedelta(minutes=1))
    redis.sadd(Queue.redis_queues_keys, queue.key)
    for start in range(0, jobs, 10_000):
        with redis.pipeline(transaction=False) as pipe:
            ids = [f"bench-{n:07d}" for n in range(start, min(jobs, start + 10_000))]
            for job_id in ids:
                pipe.hset(Job.key_for(job_id), mapping={"status": "queued", "origin": QUEUE_NAME,
                                                        "created_at": enqueued, "enqueued_at": enqueued})
            pipe.rpush(queue.key, *ids)
            pipe.execute()
    return time.perf_counter() - began


_SCAN_SQL = (
    "SELECT status, count(*), sum(duration_ms) FROM generations GROUP BY status",
    "SELECT status, count(*), sum(duration_ms), sum(provider_ms), sum(upload_ms), sum(queue_wait_ms)"
    " FROM generation_poses GROUP BY status",
    "SELECT error_type, count(*) FROM error_events GROUP BY error_type",
    "SELECT kind, sum(amount) FROM credit_ledger GROUP BY kind",
)


def scan_and_check(url: str, samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> tuple[
        float, list[str]]:
    """The exporter's counts by plain SQL over the raw tables: (seconds, the figures where they disagree)."""
    with psycopg.connect(url, autocommit=True) as conn:
        began = time.perf_counter()
        generations, poses, errors, ledger = ({r[0]: r[1:] for r in conn.execute(sql)} for sql in _SCAN_SQL)
        seconds = time.perf_counter() - began

    def got(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), -1.0)

    finished = [generations.get(s, (0, 0)) for s in ("completed", "failed")]
    posed = [poses.get(s, (0,) * 6) for s in ("completed", "failed")]
    checks = {
        "created": got("pose_generations_total", status="created") == sum(v[0] for v in generations.values()),
        "completed": got("pose_generations_total", status="completed") == finished[0][0],
        "failed": got("pose_generations_total", status="failed") == finished[1][0],
        "queued": got("pose_generations_in_progress", status="queued") == generations.get("queued", (0,))[0],
        "processing": got("pose_generations_in_progress", status="processing")
        == generations.get("processing", (0,))[0],
        "poses failed": got("pose_poses_total", status="failed") == posed[1][0],
        "poses pending": got("pose_poses_pending") == poses.get("pending", (0,))[0],
        "spent": got("pose_credits_spent_total") == ledger.get("charge", (0,))[0],
        "refunded": got("pose_credits_refunded_total") == ledger.get("refund", (0,))[0],
        "duration count": got("pose_generation_duration_seconds_count") == finished[0][0] + finished[1][0],
        "duration sum": abs(got("pose_generation_duration_seconds_sum")
                            - sum(int(v[1] or 0) for v in finished) / 1000) < 1e-3,
        "provider sum": abs(got("pose_provider_call_duration_seconds_sum")
                            - sum(int(v[2] or 0) for v in posed) / 1000) < 1e-3,
        "errors": all(got("pose_errors_total", error_type=t) == errors.get(t, (0,))[0] for t in ERROR_TYPES),
    }
    return seconds, [name for name, ok in checks.items() if not ok]


@contextmanager
def process(argv: list[str], env: dict[str, str], probe: str) -> Iterator[None]:
    child = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(probe, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv} did not start: {child.stderr.read().decode() if child.stderr else ''}")
            time.sleep(0.1)
        yield
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


def timed_scrapes(url: str, count: int) -> tuple[list[float], str]:
    with httpx.Client(timeout=10) as client:
        for _ in range(20):
            client.get(url)
        times, text = [], ""
        for _ in range(count):
            began = time.perf_counter()
            answer = client.get(url)
            times.append(time.perf_counter() - began)
            answer.raise_for_status()
            text = answer.text
    return times, text


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def measure_ours(env: dict[str, str], scrapes: int) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with process([sys.executable, "-m", "app.cli", "exporter", "--port", str(port)], env, f"{base}/"):
        times, text = timed_scrapes(f"{base}/metrics", scrapes)
        sources: dict[str, list[float]] = {"postgres": [], "redis": []}
        with httpx.Client(timeout=10) as client:
            for _ in range(50):
                samples = parse(client.get(f"{base}/metrics").text)
                for source in sources:
                    sources[source].append(
                        samples[("pose_exporter_scrape_duration_seconds", (("source", source),))])
    samples = parse(text)
    assert samples[("pose_exporter_up", (("source", "postgres"),))] == 1, "postgres down during the bench"
    assert samples[("pose_exporter_up", (("source", "redis"),))] == 1, "redis down during the bench"
    return {"median": statistics.median(times), "p95": percentile(times, 0.95), "samples": samples,
            "pg": statistics.median(sources["postgres"]), "redis": statistics.median(sources["redis"])}


def rq_exporter_command() -> tuple[list[str], str] | None:
    if importlib.util.find_spec("rq_exporter") is not None:
        return [sys.executable, "-m", "rq_exporter"], "this venv (rq 3)"
    for candidate in (shutil.which("rq-exporter"), os.environ.get("RQ_EXPORTER_BIN")):
        if candidate and os.access(candidate, os.X_OK):
            return [candidate], candidate
    return None


def measure_rq_exporter(redis_address: str, scrapes: int) -> float | str:
    found = rq_exporter_command()
    if found is None:
        return "not installed"
    argv, _ = found
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with process([*argv, "--redis-url", redis_address, "--host", "127.0.0.1", "-p", str(port),
                      "--log-level", "ERROR"], dict(os.environ), f"{base}/metrics"):
            times, text = timed_scrapes(f"{base}/metrics", scrapes)
    except (RuntimeError, httpx.HTTPError) as exc:
        return f"failed: {exc}"[:60]
    if f'queue="{QUEUE_NAME}"' not in text:
        return "ran, but did not see the queue"
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="100,000 generations, 20,000 jobs, 100 scrapes")
    args = parser.parse_args()
    if args.quick:
        args.large, args.jobs, args.scrapes = 100_000, 20_000, 100

    name = f"posegen_bench_exporter_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    index = claim_redis_db()
    redis_address = redis_url(index)
    redis = Redis.from_url(redis_address)
    rows: list[dict[str, Any]] = []
    rq_found = rq_exporter_command()
    try:
        prepare(url)
        print(f"seeding {args.jobs:,} waiting jobs: {fill_queue(redis, args.jobs):.1f} s", flush=True)
        env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_address, "LOG_LEVEL": "WARN"}
        seeder = Seeder(datetime.now(UTC))
        loaded = 0
        for size, triggers in ((args.small, True), (args.large, False)):
            seconds, rebuild = load(url, seeder, loaded, size - loaded, triggers=triggers)
            how = "COPY through the triggers" if triggers else \
                f"COPY with triggers off, then metrics_rebuild() over all rows: {rebuild:.1f} s of it"
            print(f"seeding {size - loaded:,} generations ({how}): {seconds:.1f} s", flush=True)
            loaded = size
            ours = measure_ours(env, args.scrapes)
            scan_seconds, wrong = scan_and_check(url, ours["samples"])
            if wrong:
                print(f"  exporter disagrees with the raw rows on: {', '.join(wrong)}", flush=True)
            rows.append({"size": size, **ours, "scan": scan_seconds, "exact": not wrong,
                         "rq": measure_rq_exporter(redis_address, args.scrapes)})
    finally:
        redis.close()
        release_redis_db(index)
        drop_database(name)

    print()
    print(f"Exporter scrape, {args.jobs:,} jobs waiting; {args.scrapes} scrapes per figure, client-side, ms.")
    print(f"rq-exporter: {rq_found[1] if rq_found else 'not found (see the module docstring)'}")
    header = ("generations", "median", "p95", "growth", "pg read", "redis read", "exact", "scan SQL",
              "rq-exporter median")
    print("  ".join(f"{h:>11}" for h in header))
    base = rows[0]["median"]
    for row in rows:
        rq = row["rq"]
        cells = (f"{row['size']:,}", f"{row['median'] * 1000:.1f}", f"{row['p95'] * 1000:.1f}",
                 f"{row['median'] / base:.2f}x", f"{row['pg'] * 1000:.2f}", f"{row['redis'] * 1000:.2f}",
                 "yes" if row["exact"] else "NO", f"{row['scan'] * 1000:.0f}",
                 f"{rq * 1000:.1f}" if isinstance(rq, float) else rq)
        print("  ".join(f"{c:>11}" for c in cells))
    growth = rows[-1]["median"] / base
    print(f"median scrape at {rows[-1]['size']:,} generations, ms  {rows[-1]['median'] * 1000:.1f}")
    print(f"median growth {rows[0]['size']:,} -> {rows[-1]['size']:,}  {growth:.2f}")
    ok = all(r["median"] * 1000 < TARGET_MEDIAN_MS and r["exact"] for r in rows) and growth < TARGET_GROWTH
    print(f"goal: median < {TARGET_MEDIAN_MS:.0f} ms at every size, growth < {TARGET_GROWTH}x, figures exact: "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
