"""The worker's /metrics: its work-horses' operation timings survive the work-horse exiting."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx

from tests.stack import Stack, worker_operation_counts


def test_worker_metrics_count_every_pose_operation(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=1)
    port = stack.workers[0].metrics_port
    user = stack.new_user(credits=1000)
    ids = [stack.create_generation(user, ["pose_tree_pose", "pose_arms_crossed"]).json()["generationId"]
           for _ in range(3)]
    for generation_id in ids:
        stack.wait_finished(user, generation_id)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and worker_operation_counts(port).get("pose_total", 0) < 6:
        time.sleep(0.1)
    counts = worker_operation_counts(port)
    assert counts["pose_total"] == 6 and counts["provider_call"] == 6 and counts["image_upload"] == 6
    assert counts["controlnet_render"] == 6 and counts["queue_wait"] == 3
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "process_resident_memory_bytes" in text
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check
