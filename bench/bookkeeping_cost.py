"""What the bookkeeping triggers cost a create: pgbench of ``posegen_create_generations``, with and without.

Setup: one fresh database per variant, migrated, seeded with the pose library and 1,000 accounts with
ample credits. pgbench runs one script from C clients for D seconds: each call creates 16 generations of
4 poses (random users) in one transaction, as the API's shared creates do. Variants:

- ``none``: every bookkeeping trigger disabled and the batch's own counting a no-op (the cost of the
  create itself: the baseline);
- ``before``: the exporter's counter triggers of 002 and the admin rollup deltas of 003/005 (from git);
- ``rollups`` (with ``--variants``): ``before`` with 002's triggers disabled, the admin rollups alone;
- ``shared``: 008's one family of insert-only deltas for the exporter and the admin metrics, written by
  row triggers, folded at commit in one transaction of 16 (from git, see :data:`REVISIONS`);
- ``after``: the current design (010): inserts counted per statement, the batch's creates counted once
  at its end, folding done by the workers' timer and the readers, not at commit.

Reports calls/s (each 16 creates) and the cost relative to ``none`` (none's rate / the variant's rate);
variants take turns round by round, each database vacuumed before its round (as autovacuum would), and
while pgbench runs a thread folds the deltas every 5 s, as the workers' timer does. On a
machine shared with other work, pgbench rounds vary by half; so the table also shows single calls from
one client, the variants taking turns call by call, at their first quartile: the steadier comparison.
The cost column compares best rounds; beside it the same ratio of the rounds' medians.
Run: ``.venv/bin/python -m bench.bookkeeping_cost [--clients 2] [--seconds 20] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from app.db.migrate import migrate
from app.domain.poses import seed_pose_library
from tests.stack import create_database, drop_database

BOOKKEEPING_TABLES = ("generations", "generation_poses", "credit_ledger", "error_events")
USERS = 1000
SCRIPT = """\\set u random(0, {last_user})
SELECT count(*) FROM posegen_create_generations(
  (SELECT jsonb_agg(jsonb_build_object(
      'id', gen_random_uuid()::text, 'userId', 'bench_' || ((:u + i * 61) % {users}), 'prompt', 'a pgbench portrait',
      'poseIds', '["pose_standing_confident","pose_arms_crossed","pose_waving_hello","pose_tree_pose"]'::jsonb))
     FROM generate_series(1, 16) AS i),
  30, 60);
"""


# Earlier designs, applied from git history (their triggers are in no current file):
# - ``before``: migrations 001-007 as they stood at the last revision whose migrations carried the function
#   bodies of their day (the exporter's counter triggers of 002, the admin rollup deltas of 003/005);
# - ``shared``: migrations and function files as they stood before migration 010 (008's one family of
#   insert-only deltas, written by a row trigger per create and folded inside one commit in 16).
REVISIONS = {"before": ("da94e54", "008"), "rollups": ("da94e54", "008"), "shared": ("cf3c178", "010")}


def files_at(revision: str, folder: str, below: str) -> list[tuple[str, str]]:
    """``(name, sql)`` of ``app/db/<folder>/*.sql`` at ``revision`` whose names sort below ``below`` (git)."""
    root = Path(__file__).resolve().parent.parent
    listing = subprocess.run(["git", "ls-tree", "--name-only", revision, f"app/db/{folder}/"], cwd=root,
                             capture_output=True, text=True)
    if listing.returncode != 0:
        raise SystemExit(f"bookkeeping_cost: revision {revision} is not in this checkout's git history (a shallow"
                         " or exported copy?); fetch the history, or run with --variants none,after")
    names = listing.stdout.split()
    files = [(Path(path).stem, path) for path in sorted(names) if path.endswith(".sql") and Path(path).stem < below]
    return [(name, subprocess.run(["git", "show", f"{revision}:{path}"], cwd=root, capture_output=True,
                                  text=True, check=True).stdout) for name, path in files]


def migrate_at(url: str, revision: str, below: str) -> None:
    """Migrate with the migrations (those below ``below``) and function files as they stood at ``revision``."""
    migrate(url, files_at(revision, "migrations", below), files_at(revision, "functions", "~"))


def prepare(name: str, variant: str) -> str:
    url = create_database(name)
    if variant in REVISIONS:
        migrate_at(url, *REVISIONS[variant])
    else:
        migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO credit_accounts (user_id, balance) SELECT 'bench_' || i, 1000000000000"
                     " FROM generate_series(0, %s) AS i", (USERS - 1,))
        if variant == "none":
            for table in BOOKKEEPING_TABLES:
                conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            # The batch's own counting (010) becomes a no-op: what is left is the create itself.
            conn.execute("CREATE OR REPLACE FUNCTION metrics_generations_created(p_ids text[]) RETURNS void"
                         " LANGUAGE plpgsql AS $$ BEGIN RETURN; END; $$")
        if variant == "rollups":
            for table, trigger in conn.execute("SELECT tgrelid::regclass::text, tgname FROM pg_trigger"
                                               " WHERE tgname LIKE 'exporter\\_%'").fetchall():
                conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")

    async def seed() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
            await seed_pose_library(aconn)

    asyncio.run(seed())
    warm_up(url)
    return url


def warm_up(url: str, calls: int = 320) -> None:
    """Create ``calls`` × 16 generations and ANALYZE, so rounds run against tables with rows and statistics.

    On a table the planner last saw empty, each backend's cached plan for the foreign-key checks
    (``SELECT 1 FROM generations WHERE id = $1``) is a sequential scan, kept while the table grows: the
    first round of a fresh database measured 5-8× slower than the next, whatever the variant. Production
    tables have rows and autovacuum's statistics; this gives the bench the same.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(calls):
            conn.execute(_single_call_sql(), (i % USERS,)).fetchall()
        conn.execute("VACUUM (ANALYZE)")


def _single_call_sql() -> str:
    """The pgbench script's call as one psycopg statement, the user number a ``%s`` parameter."""
    return SCRIPT.format(users=USERS, last_user=USERS - 1).split("\n", 1)[1].replace("%", "%%").replace(":u", "%s")


# How often the deltas are folded while pgbench runs: what the workers' reaper pass does in production
# (POSEGEN_REAPER_INTERVAL_SECONDS, 5 s), so the cost of folding is in every variant's figure.
FOLD_INTERVAL_SECONDS = 5.0
FOLD_ROWS = 50_000


def fold_periodically(url: str, stop: threading.Event) -> None:
    """Fold every :data:`FOLD_INTERVAL_SECONDS` until ``stop`` (the disabled variant folds nothing)."""
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.wait(FOLD_INTERVAL_SECONDS):
            conn.execute("SELECT metrics_fold(%s)", (FOLD_ROWS,))


def pgbench(url: str, clients: int, seconds: int) -> float:
    # The delta tables rely on autovacuum (migration 003 sets their thresholds); the server here may run
    # with autovacuum off, where dead delta rows would pile up round after round. Every variant is
    # vacuumed before each round alike, as autovacuum would about once a minute.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
    parts = urlsplit(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(SCRIPT.format(users=USERS, last_user=USERS - 1))
    stop = threading.Event()
    folder = threading.Thread(target=fold_periodically, args=(url, stop), daemon=True)
    folder.start()
    try:
        result = subprocess.run(
            ["pgbench", "-n", "-c", str(clients), "-j", str(clients), "-T", str(seconds), "-f", script.name,
             "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-U", parts.username or "postgres",
             parts.path.lstrip("/")],
            capture_output=True, text=True, check=True)
    finally:
        stop.set()
        folder.join()
        Path(script.name).unlink()
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", result.stdout)
    if match is None:
        raise RuntimeError(f"pgbench printed no tps:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


def interleaved_calls(urls: dict[str, str], calls: int) -> dict[str, float]:
    """Seconds per call at the first quartile, one call per variant in turn: a noisy neighbour slows the
    variants alike, and the quartile keeps the calls it slowed least."""
    sql = _single_call_sql()
    conns = {variant: psycopg.connect(url, autocommit=True) for variant, url in urls.items()}
    times: dict[str, list[float]] = {variant: [] for variant in urls}
    try:
        for conn in conns.values():
            conn.execute("VACUUM (ANALYZE)")
        for i in range(calls):
            for variant, conn in conns.items():
                began = time.perf_counter()
                conn.execute(sql, (i % USERS,)).fetchall()
                times[variant].append(time.perf_counter() - began)
    finally:
        for conn in conns.values():
            conn.close()
    return {variant: sorted(values)[len(values) // 4] for variant, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="variants take turns; the best round counts")
    parser.add_argument("--variants", default="none,before,shared,after")
    parser.add_argument("--calls", type=int, default=200, help="interleaved single-client calls per variant")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in variants:
        if variant in REVISIONS:
            files_at(REVISIONS[variant][0], "migrations", "001")  # refused at once when history is missing
    names = {variant: f"posegen_bookkeeping_{variant}_{uuid.uuid4().hex[:6]}" for variant in variants}
    rates: dict[str, list[float]] = {variant: [] for variant in variants}
    try:
        urls = {variant: prepare(names[variant], variant) for variant in variants}
        for round_number in range(args.rounds):
            # Interleaved, so a noisy neighbour hits every variant alike, and in a rotated order, so no
            # variant always runs first (after the others' WAL, or on a machine still quiet).
            shift = round_number % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                rates[variant].append(pgbench(urls[variant], args.clients, args.seconds))
        quartile = interleaved_calls(urls, args.calls)
    finally:
        for name in names.values():
            drop_database(name)
    best = {variant: max(values) for variant, values in rates.items()}
    median = {variant: statistics.median(values) for variant, values in rates.items()}
    print(f"bookkeeping cost: pgbench of posegen_create_generations (16 creates of 4 poses per call), "
          f"{args.clients} clients, {args.seconds} s x {args.rounds} rounds (best round)")
    print(f"{'variant':<52}{'calls/s':>10}{'creates/s':>11}{'cost x none':>13}{'target':>9}{'median rounds x none':>22}"
          f"{'1 client p25 ms':>17}{'x none':>8}")
    labels = {"none": "none (no bookkeeping)",
              "before": "before (002 exporter counters + 003/005 rollups)",
              "rollups": "003/005 admin rollups alone (002 disabled)",
              "shared": "008 (shared deltas per row, fold at commit)",
              "after": "after (010: per statement/transaction)"}
    targets = {"none": "1.00", "before": "", "after": "<= 1.30"}
    for variant in variants:
        cost = best["none"] / best[variant] if "none" in best else float("nan")
        median_cost = median["none"] / median[variant] if "none" in median else float("nan")
        print(f"{labels.get(variant, variant):<52}{best[variant]:>10.1f}{best[variant] * 16:>11.0f}{cost:>13.2f}"
              f"{targets.get(variant, ''):>9}{median_cost:>22.2f}"
              f"{quartile[variant] * 1000:>17.2f}"
              f"{quartile[variant] / quartile.get('none', float('nan')):>8.2f}")
    print("all rounds, calls/s: " + " | ".join(f"{v} " + " ".join(f"{r:.1f}" for r in rates[v]) for v in variants))


if __name__ == "__main__":
    main()
