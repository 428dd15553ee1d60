"""Provider saturation: are the FLUX account's concurrent-task allowance used to the full, and never exceeded?

Setup: the fake FLUX server (real HTTP on 127.0.0.1) with a fixed latency and an account cap (it answers 429
above the cap and records the peak); a stack of API + W worker processes with the flux provider and
POSEGEN_PROVIDER_CONCURRENCY = cap; G generations x 4 poses created through the API. Run twice, side by
side on fresh stacks: completion by polling (FLUX_POLL_INTERVAL_SECONDS, its default unless ``--poll``),
then completion by webhook (FLUX_WEBHOOKS=true, the fake posting to the API, polling every 5 s as fallback).
Reports the makespan against the ideal (poses x latency / cap), peak in-flight, 429 count, polls per task,
and the resident memory of every process after the run.
Run: ``.venv/bin/python -m bench.provider_saturation [--generations 100] [--workers 12] [--latency 2] [--cap 24]
[--modes polling,webhooks]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from app.settings import Settings
from tests.fakes.flux_server import FakeFlux
from tests.stack import build_template, drop_database, running_stack

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(template: str, generations: int, workers: int, latency: float, cap: int, poll: float,
        webhooks: bool) -> dict[str, float]:
    with FakeFlux(latency=latency, cap=cap) as fake, tempfile.TemporaryDirectory() as tmp:
        env = {"POSEGEN_PROVIDER": "flux", "FLUX_API_KEY": fake.api_key, "FLUX_BASE_URL": fake.base_url,
               "FLUX_POLL_INTERVAL_SECONDS": str(poll), "POSEGEN_PROVIDER_CONCURRENCY": str(cap),
               "LOG_LEVEL": "WARN", "FLUX_WEBHOOKS": "true" if webhooks else "false"}
        with running_stack(template, Path(tmp), workers=0, api=False, **env) as stack:
            # The fake FLUX posts webhooks to the API's own address, known once the stack has its port.
            stack.env["POSEGEN_PUBLIC_BASE_URL"] = stack.base_url
            stack.start_api()
            for _ in range(workers):
                stack.start_worker()
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
            tasks = [t for t in fake.tasks() if t.downloaded_at is not None]
            ready_to_download = statistics.median(t.downloaded_at - t.ready_at for t in tasks) * 1000
            answered = [d.late_seconds for d in fake.deliveries() if not d.forged]
            webhook_ms = statistics.median(answered) * 1000 if answered else float("nan")
            with stack.db() as conn:
                (provider_ms,) = conn.execute(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY provider_ms) FROM generation_poses"
                    " WHERE generation_id = ANY(%s)", ([g for _, g in ids],)).fetchone()
                busy = conn.execute("SELECT sum(provider_ms) FROM generation_poses WHERE generation_id = ANY(%s)",
                                    ([g for _, g in ids],)).fetchone()[0]
            memory = {"api": rss_mib(stack.api.pid)} if stack.api else {}
            memory["worker (max)"] = max(rss_mib(w.pid) for w in stack.workers)
    ideal = generations * len(POSES) * latency / cap
    return {"makespan": makespan, "ideal": ideal, "ratio": makespan / ideal, "peak": stats["peak_in_flight"],
            "rate_limited": stats["rate_limited"], "completed": statuses.count("completed"),
            "ready_to_download_ms": ready_to_download, "webhook_ms": webhook_ms,
            "polls_per_task": stats["polls"] / max(stats["accepted"], 1), "webhooks": stats["webhooks_accepted"],
            "generations": generations, "provider_ms": float(provider_ms),
            "utilisation": float(busy) / 1000 / (cap * makespan),
            **{f"rss {k} MiB": v for k, v in memory.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=100)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--cap", type=int, default=24)
    parser.add_argument("--poll", type=float, default=Settings.flux_poll_interval_seconds,
                        help="FLUX_POLL_INTERVAL_SECONDS (default: the setting's default)")
    parser.add_argument("--modes", default="polling,webhooks", help="comma-separated: polling, webhooks")
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    template = build_template()
    try:
        results = {mode: run(template, args.generations, args.workers, args.latency, args.cap, args.poll,
                             webhooks=mode == "webhooks") for mode in modes}
    finally:
        drop_database(template)
    print(f"provider saturation: {args.generations} generations x 4 poses, fake FLUX latency {args.latency} s, "
          f"cap {args.cap}, {args.workers} worker processes (4 poses each in flight); polling every {args.poll} s, "
          "or webhooks (fallback poll every 5 s)")
    targets = {"polling": "<= 1.15", "webhooks": "<= 1.05"}
    rows: list[tuple[str, str, str]] = [
        ("makespan, s", ".1f", "ideal " + format(next(iter(results.values()))["ideal"], ".1f")),
        ("makespan / ideal", ".3f", " / ".join(targets[m] for m in modes)),
        ("peak in-flight at FLUX", ".0f", "<= " + str(args.cap)),
        ("429 answers", ".0f", "0"),
        ("completed generations", ".0f", str(args.generations)),
        ("median provider call (slot held), ms", ".0f", "latency " + format(args.latency * 1000, ".0f")),
        ("slot utilisation", ".3f", "1.0"),
        ("polls per task", ".2f", ""),
        ("median task ready -> sample downloaded, ms", ".0f", "0"),
        ("median webhook answered after ready, ms", ".0f", ""),
        ("webhooks accepted", ".0f", ""),
    ]
    keys = {"makespan, s": "makespan", "makespan / ideal": "ratio", "peak in-flight at FLUX": "peak",
            "429 answers": "rate_limited", "completed generations": "completed",
            "median provider call (slot held), ms": "provider_ms", "slot utilisation": "utilisation",
            "polls per task": "polls_per_task", "webhooks accepted": "webhooks",
            "median task ready -> sample downloaded, ms": "ready_to_download_ms",
            "median webhook answered after ready, ms": "webhook_ms"}
    print(f"{'figure':<44}" + "".join(f"{mode:>12}" for mode in modes) + f"{'baseline / target':>26}")
    for label, fmt, target in rows:
        print(f"{label:<44}" + "".join(f"{results[m][keys[label]]:>12{fmt}}" for m in modes) + f"{target:>26}")
    for key in next(iter(results.values())):
        if key.startswith("rss"):
            print(f"{key:<44}" + "".join(f"{results[m][key]:>12.1f}" for m in modes))


if __name__ == "__main__":
    main()
