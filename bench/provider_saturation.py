"""Provider saturation: are the FLUX account's concurrent-task allowance used to the full, and never exceeded?

Setup: the fake FLUX server (real HTTP on 127.0.0.1) with a fixed latency and an account cap (it answers 429
above the cap and records the peak); a stack of API + W worker processes with the flux provider and
POSEGEN_PROVIDER_CONCURRENCY = cap; G generations x 4 poses created through the API.
Reports the makespan against the ideal (poses x latency / cap), peak in-flight, 429 count, and the resident
memory of every process after the run.
Run: ``.venv/bin/python -m bench.provider_saturation [--generations 100] [--workers 8] [--latency 2] [--cap 24]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.fakes.flux_server import FakeFlux
from tests.stack import build_template, drop_database, running_stack

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(generations: int, workers: int, latency: float, cap: int, poll: float) -> dict[str, float]:
    template = build_template()
    try:
        with FakeFlux(latency=latency, cap=cap) as fake, tempfile.TemporaryDirectory() as tmp:
            env = {"POSEGEN_PROVIDER": "flux", "FLUX_API_KEY": fake.api_key, "FLUX_BASE_URL": fake.base_url,
                   "FLUX_POLL_INTERVAL_SECONDS": str(poll), "POSEGEN_PROVIDER_CONCURRENCY": str(cap),
                   "LOG_LEVEL": "WARN"}
            with running_stack(template, Path(tmp), workers=workers, **env) as stack:
                users = [stack.new_user(credits=10**7) for _ in range(10)]
                stack.wait_workers_ready(workers)
                fake.reset_stats()
                began = time.perf_counter()
                ids = [(users[i % len(users)], stack.create_generation(users[i % len(users)], POSES,
                                                                        prompt=f"saturation {i}").json()
                        ["generationId"]) for i in range(generations)]
                statuses = [stack.wait_finished(user, gid, timeout=600)["status"] for user, gid in ids]
                makespan = time.perf_counter() - began
                stats = fake.stats()
                with stack.db() as conn:
                    (provider_ms,) = conn.execute(
                        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY provider_ms) FROM generation_poses"
                        " WHERE generation_id = ANY(%s)", ([g for _, g in ids],)).fetchone()
                    busy = conn.execute("SELECT sum(provider_ms) FROM generation_poses WHERE generation_id = ANY(%s)",
                                        ([g for _, g in ids],)).fetchone()[0]
                memory = {"api": rss_mib(stack.api.pid)} if stack.api else {}
                memory["worker (max)"] = max(rss_mib(w.pid) for w in stack.workers)
    finally:
        drop_database(template)
    ideal = generations * len(POSES) * latency / cap
    return {"makespan": makespan, "ideal": ideal, "ratio": makespan / ideal, "peak": stats["peak_in_flight"],
            "rate_limited": stats["rate_limited"], "completed": statuses.count("completed"),
            "generations": generations, "provider_ms": float(provider_ms),
            "utilisation": float(busy) / 1000 / (cap * makespan),
            **{f"rss {k} MiB": v for k, v in memory.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=100)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--cap", type=int, default=24)
    parser.add_argument("--poll", type=float, default=0.2, help="FLUX_POLL_INTERVAL_SECONDS")
    args = parser.parse_args()
    result = run(args.generations, args.workers, args.latency, args.cap, args.poll)
    print(f"provider saturation: {args.generations} generations x 4 poses, fake FLUX latency {args.latency} s, "
          f"cap {args.cap}, {args.workers} worker processes (4 poses each in flight), poll every {args.poll} s")
    print(f"{'figure':<34}{'value':>10}{'baseline / target':>26}")
    print(f"{'makespan, s':<34}{result['makespan']:>10.1f}{'ideal ' + format(result['ideal'], '.1f'):>26}")
    print(f"{'makespan / ideal':<34}{result['ratio']:>10.3f}{'<= 1.15':>26}")
    print(f"{'peak in-flight at FLUX':<34}{result['peak']:>10.0f}{'<= ' + str(args.cap):>26}")
    print(f"{'429 answers':<34}{result['rate_limited']:>10.0f}{'0':>26}")
    print(f"{'completed generations':<34}{result['completed']:>10.0f}{result['generations']:>26}")
    print(f"{'median provider call (slot held), ms':<34}{result['provider_ms']:>10.0f}"
          f"{'latency ' + format(args.latency * 1000, '.0f'):>26}")
    print(f"{'slot utilisation':<34}{result['utilisation']:>10.3f}{'1.0':>26}")
    for key, value in result.items():
        if key.startswith("rss"):
            print(f"{key:<34}{value:>10.1f}")


if __name__ == "__main__":
    main()
