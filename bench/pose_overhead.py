"""Per-pose overhead: the local provider at zero latency, one worker process.

Setup: a stack of its own (API + 1 worker, database cloned from a migrated
template, Redis db of its own); N generations x 4 poses from several users.
Overhead per pose = its total time minus the provider call, read from the
timings the worker records in PostgreSQL. Run: ``.venv/bin/python -m bench.pose_overhead [N]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.stack import build_template, drop_database, running_stack

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]


def main(count: int = 60) -> None:
    template = build_template()
    try:
        with tempfile.TemporaryDirectory() as tmp, running_stack(template, Path(tmp), workers=1) as stack:
            users = [stack.new_user(credits=10**7) for _ in range(4)]
            warm = stack.create_generation(users[0], POSES[:1]).json()["generationId"]
            stack.wait_finished(users[0], warm)
            began = time.perf_counter()
            ids = [(users[i % 4], stack.create_generation(users[i % 4], POSES, prompt=f"bench {i}").json()
                    ["generationId"]) for i in range(count)]
            for user, generation_id in ids:
                stack.wait_finished(user, generation_id, timeout=300)
            wall = time.perf_counter() - began
            with stack.db() as conn:
                rows = conn.execute(
                    "SELECT duration_ms, provider_ms, controlnet_ms, upload_ms FROM generation_poses"
                    " WHERE generation_id = ANY(%s) AND status = 'completed'", ([g for _, g in ids],)).fetchall()
    finally:
        drop_database(template)
    overhead = [d - p for d, p, _, _ in rows]
    poses = len(rows)
    print(f"pose overhead, local provider at zero latency, 1 worker process, {count} generations x 4 poses")
    print(f"{'figure':<44}{'value':>12}")
    print(f"{'poses per second (one worker process)':<44}{poses / wall:>12.1f}")
    print(f"{'median pose total, ms':<44}{statistics.median(d for d, *_ in rows):>12.1f}")
    print(f"{'median provider call (Pillow render), ms':<44}{statistics.median(p for _, p, *_ in rows):>12.1f}")
    print(f"{'median overhead (total - provider), ms':<44}{statistics.median(overhead):>12.1f}   target <= 15")
    print(f"{'  of which ControlNet skeleton render, ms':<44}{statistics.median(c for _, _, c, _ in rows):>12.1f}")
    print(f"{'  of which upload (local storage), ms':<44}{statistics.median(u for *_, u in rows):>12.1f}")
    print(f"{'p95 overhead, ms':<44}{sorted(overhead)[int(0.95 * len(overhead))]:>12.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60)
