"""Wall time of one 4-pose generation with the fake FLUX server at a fixed latency.

Poses run concurrently, so a generation should take about one provider latency, not four.
Setup: fake FLUX (real HTTP on 127.0.0.1, latency L), a stack of API + 1 worker with the flux provider;
N generations one after another; the wall time is the generation's own durationMs (created -> finished).
Run: ``.venv/bin/python -m bench.generation_wall_time [--latency 2] [--runs 5]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from tests.fakes.flux_server import FakeFlux
from tests.stack import build_template, drop_database, running_stack

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    template = build_template()
    walls: list[float] = []
    try:
        with FakeFlux(latency=args.latency) as fake, tempfile.TemporaryDirectory() as tmp:
            env = {"POSEGEN_PROVIDER": "flux", "FLUX_API_KEY": fake.api_key, "FLUX_BASE_URL": fake.base_url,
                   "FLUX_POLL_INTERVAL_SECONDS": "0.1", "LOG_LEVEL": "WARN"}
            with running_stack(template, Path(tmp), workers=1, **env) as stack:
                stack.wait_workers_ready(1)
                user = stack.new_user(credits=10**6)
                for i in range(args.runs):
                    generation_id = stack.create_generation(user, POSES, prompt=f"wall {i}").json()["generationId"]
                    done = stack.wait_finished(user, generation_id, timeout=120)
                    assert done["status"] == "completed", done
                    walls.append(done["durationMs"] / 1000)
    finally:
        drop_database(template)
    serial = len(POSES) * args.latency
    print(f"one generation of 4 poses, fake FLUX latency {args.latency} s, 1 worker, {args.runs} runs")
    print(f"{'figure':<40}{'value':>10}")
    print(f"{'median wall time, s':<40}{statistics.median(walls):>10.2f}")
    print(f"{'min / max, s':<40}{min(walls):>5.2f} / {max(walls):.2f}")
    print(f"{'one provider latency (ideal), s':<40}{args.latency:>10.2f}")
    print(f"{'poses one after another, s':<40}{serial:>10.2f}")
    print(f"{'median / ideal':<40}{statistics.median(walls) / args.latency:>10.2f}")


if __name__ == "__main__":
    main()
