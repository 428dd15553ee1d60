"""Workers on one host: W plain ``posegen worker``s against one ``posegen worker --processes W``, same run.

Setup: the fake FLUX server (real HTTP on 127.0.0.1, fixed latency, an account cap it answers 429 above); per
mode a fresh stack (API + W worker processes, flux provider, POSEGEN_PROVIDER_CONCURRENCY = cap) and G
generations x 4 poses created through the API. Modes (``--modes``, side by side): ``plain``, W times
``posegen worker`` given the same metrics port, as a user starting more workers on a host does; ``pool``, one
``posegen worker --processes W``; ``separate``, each with a metrics port of its own (the baseline of how the
other benchmarks start workers). Reports the makespan against the ideal (poses x latency / cap), peak
in-flight, 429s, how many processes are still alive, how long the creates took, and for the shared endpoints
the endpoint's pose count against the poses run.
Run: ``.venv/bin/python -m bench.worker_processes [--generations 50] [--workers 8] [--modes plain,pool,separate]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.provider_saturation import POSES
from tests.fakes.flux_server import FakeFlux
from tests.stack import Stack, build_template, drop_database, free_port, running_stack, worker_operation_counts

MODES = ("plain", "pool", "separate")


def start_workers(stack: Stack, workers: int, mode: str) -> int:
    """Start ``workers`` worker processes as ``mode`` says; returns the shared metrics port (0: none)."""
    if mode == "pool":
        return stack.start_worker("--processes", str(workers)).metrics_port
    port = free_port() if mode == "plain" else 0
    for _ in range(workers):
        stack.start_worker(metrics_port=port or None)
    return port


def settled_pose_count(port: int, expected: int, timeout: float = 15) -> float:
    """``pose_total`` count at the shared endpoint once the last work-horse has flushed (or after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        count = worker_operation_counts(port).get("pose_total", 0)
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def run(template: str, mode: str, generations: int, workers: int, latency: float, cap: int,
        poll: float) -> dict[str, float]:
    with FakeFlux(latency=latency, cap=cap) as fake, tempfile.TemporaryDirectory() as tmp:
        env = {"POSEGEN_PROVIDER": "flux", "FLUX_API_KEY": fake.api_key, "FLUX_BASE_URL": fake.base_url,
               "FLUX_POLL_INTERVAL_SECONDS": str(poll), "POSEGEN_PROVIDER_CONCURRENCY": str(cap),
               "LOG_LEVEL": "WARN"}
        with running_stack(template, Path(tmp), workers=0, **env) as stack:
            shared_port = start_workers(stack, workers, mode)
            users = [stack.new_user(credits=10**7) for _ in range(10)]
            stack.wait_workers_ready(workers)
            fake.reset_stats()
            began = time.perf_counter()
            ids = [(users[i % len(users)], stack.create_generation(users[i % len(users)], POSES,
                                                                    prompt=f"saturation {i}").json()
                    ["generationId"]) for i in range(generations)]
            submitted = time.perf_counter() - began
            statuses = [stack.wait_finished(user, gid, timeout=600)["status"] for user, gid in ids]
            makespan = time.perf_counter() - began
            stats = fake.stats()
            endpoint_poses = settled_pose_count(shared_port, generations * len(POSES)) if shared_port else -1
            alive = sum(w.alive() for w in stack.workers)
            started = len(stack.workers)
    ideal = generations * len(POSES) * latency / cap
    return {"makespan": makespan, "ideal": ideal, "ratio": makespan / ideal, "peak": stats["peak_in_flight"],
            "rate_limited": stats["rate_limited"], "completed": statuses.count("completed"),
            "generations": generations, "endpoint_poses": endpoint_poses, "submitted": submitted, "alive": alive,
            "started": started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=50)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--cap", type=int, default=24)
    parser.add_argument("--poll", type=float, default=0.2, help="FLUX_POLL_INTERVAL_SECONDS")
    parser.add_argument("--modes", default="plain,pool,separate", help=f"comma-separated, of {', '.join(MODES)}")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: each of {', '.join(MODES)}")
    template = build_template()
    try:
        results = {m: run(template, m, args.generations, args.workers, args.latency, args.cap, args.poll)
                   for m in modes}
    finally:
        drop_database(template)
    print(f"workers on one host: {args.generations} generations x 4 poses, fake FLUX latency {args.latency} s, "
          f"cap {args.cap}, poll every {args.poll} s")
    print(f"{'mode':<46}{'makespan s':>11}{'ideal s':>9}{'/ ideal':>9}{'target':>8}{'peak':>6}{'429':>5}"
          f"{'done':>6}{'alive':>7}{'endpoint poses':>16}{'creates took s':>16}")
    labels = {"separate": f"{args.workers} x posegen worker, own ports",
              "plain": f"{args.workers} x posegen worker, one port (plain)",
              "pool": f"posegen worker --processes {args.workers}"}
    for mode, r in results.items():
        endpoint = (f"{r['endpoint_poses']:.0f} / {r['generations'] * len(POSES):.0f}"
                    if r["endpoint_poses"] >= 0 else "-")
        print(f"{labels[mode]:<46}{r['makespan']:>11.1f}{r['ideal']:>9.1f}{r['ratio']:>9.3f}{'<=1.15':>8}"
              f"{r['peak']:>6.0f}{r['rate_limited']:>5.0f}{r['completed']:>6.0f}"
              f"{str(int(r['alive'])) + '/' + str(int(r['started'])):>7}{endpoint:>16}{r['submitted']:>16.1f}")


if __name__ == "__main__":
    main()
