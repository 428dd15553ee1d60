"""Sustained mixed load: creates and polls at a stated rate for minutes, no 5xx, memory flat.

Setup: a stack of API + 2 workers (local provider, 0.2-1 s per pose), 20 users with credits; an in-repo
open-loop load generator (asyncio + httpx) sends RATE requests per second: 20% `POST /generations`
(1-4 poses), 80% `GET /generations/{id}` of a random earlier one. Reports achieved rate, p50/p99 per
kind, non-2xx counts, and the resident memory of every process at the start, middle and end.
Run: ``.venv/bin/python -m bench.load_mixed [--rate 40] [--duration 300]``
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

from bench.provider_saturation import rss_mib
from tests.stack import Stack, build_template, drop_database, running_stack

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose",
         "pose_runway_walk", "pose_deep_squat"]


def memory(stack: Stack) -> dict[str, float]:
    found = {"api": rss_mib(stack.api.pid)} if stack.api else {}
    for index, worker in enumerate(stack.workers):
        found[f"worker {index + 1}"] = rss_mib(worker.pid)
    return found


async def drive(stack: Stack, rate: float, duration: float) -> tuple[dict, Counter, list[dict[str, float]]]:
    rng = random.Random(1)
    users = [stack.new_user(credits=10**8) for _ in range(20)]
    headers = {u: stack.headers(u) for u in users}
    created: list[tuple[str, str]] = []
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: Counter[str] = Counter()
    samples = [memory(stack)]
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=str(stack.http.base_url), timeout=30, limits=limits) as client:

        async def one(kind: str) -> None:
            user = rng.choice(users)
            began = time.perf_counter()
            if kind == "create" or not created:
                kind = "create"
                poses = rng.sample(POSES, rng.randint(1, 4))
                answer = await client.post("/generations", json={"poseIds": poses, "prompt": "load"},
                                           headers=headers[user])
                if answer.status_code == 202:
                    created.append((user, answer.json()["generationId"]))
            else:
                owner, generation_id = rng.choice(created)
                answer = await client.get(f"/generations/{generation_id}", headers=headers[owner])
            latencies[kind].append((time.perf_counter() - began) * 1000)
            statuses[f"{kind} {answer.status_code}"] += 1

        tasks = []
        start = time.perf_counter()
        sent = 0
        next_sample = start + duration / 2
        while (now := time.perf_counter()) - start < duration:
            due = int((now - start) * rate)
            while sent < due:
                tasks.append(asyncio.create_task(one("create" if rng.random() < 0.2 else "poll")))
                sent += 1
            if now >= next_sample:
                samples.append(memory(stack))
                next_sample = float("inf")
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    samples.append(memory(stack))
    summary = {kind: {"n": len(v), "p50": statistics.median(v), "p99": sorted(v)[int(0.99 * (len(v) - 1))]}
               for kind, v in latencies.items()}
    summary["achieved_rate"] = {"n": sent / elapsed, "p50": 0, "p99": 0}
    return summary, statuses, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds")
    args = parser.parse_args()
    template = build_template()
    try:
        with tempfile.TemporaryDirectory() as tmp, running_stack(
                template, Path(tmp), workers=2, POSEGEN_LOCAL_LATENCY="0.2-1", LOG_LEVEL="WARN",
                POSEGEN_RATE_LIMIT_PER_MINUTE="100000") as stack:
            stack.wait_workers_ready(2)
            summary, statuses, samples = asyncio.run(drive(stack, args.rate, args.duration))
            with stack.db() as conn:
                open_ = conn.execute("SELECT count(*) FROM generations WHERE status IN ('queued', 'processing')"
                                     ).fetchone()[0]
                total = conn.execute("SELECT count(*) FROM generations").fetchone()[0]
    finally:
        drop_database(template)
    print(f"mixed load: {args.rate:.0f} req/s for {args.duration:.0f} s (20% create, 80% poll), API + 2 workers")
    print(f"achieved rate: {summary.pop('achieved_rate')['n']:.1f} req/s")
    print(f"{'kind':<10}{'requests':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for kind, figure in summary.items():
        print(f"{kind:<10}{figure['n']:>10}{figure['p50']:>10.1f}{figure['p99']:>10.1f}")
    print("answers:", dict(sorted(statuses.items())))
    server_errors = sum(n for key, n in statuses.items() if key.split()[-1].startswith("5"))
    print(f"5xx answers: {server_errors}")
    print(f"generations created: {total}, still queued or processing at the end: {open_}")
    print("resident memory, MiB (start / middle / end):")
    for name in samples[0]:
        print(f"  {name:<10}" + " / ".join(f"{s.get(name, 0):.1f}" for s in samples))


if __name__ == "__main__":
    main()
