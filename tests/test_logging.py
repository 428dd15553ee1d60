"""Structured JSON logs in the seed's shape, and the performance tracker feeding logs and histograms."""

from __future__ import annotations

import asyncio
import io
import json
import time

from prometheus_client import CollectorRegistry, Histogram

from app.observability.logging import configure_logging, get_logger
from app.observability.performance import PerformanceTracker
from tests.stack import Stack


def _entries(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_worker_logs_are_seed_shaped_json(stack: Stack) -> None:
    user = stack.new_user(credits=100)
    generation_id = stack.create_generation(user, ["pose_tree_pose"]).json()["generationId"]
    stack.wait_finished(user, generation_id)
    time.sleep(0.3)
    entries = [e for w in stack.workers for e in _entries(w.output())]
    mine = [e for e in entries if e["metadata"].get("generationId") == generation_id]
    assert mine, "worker logs mention the generation"
    for entry in mine:
        assert set(entry) >= {"timestamp", "level", "component", "message", "metadata"}
        assert entry["level"] in {"DEBUG", "INFO", "WARN", "ERROR"}
        assert entry["timestamp"].endswith("Z") and len(entry["timestamp"]) == 24
    messages = {e["message"] for e in mine}
    assert {"Processing generation job", "Generated pose successfully", "Generation finished"} <= messages
    success = next(e for e in mine if e["message"] == "Generated pose successfully")
    assert success["component"] == "Worker"
    assert success["metadata"]["poseId"] == "pose_tree_pose" and success["metadata"]["duration"] >= 0


def test_error_entries_carry_the_exception() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", stream)
    try:
        raise OSError("bucket unreachable")
    except OSError as exc:
        get_logger("Storage").error("Failed to upload image", exc_info=exc, generationId="gen_1", poseId="p")
    entry = json.loads(stream.getvalue().splitlines()[-1])
    assert entry["level"] == "ERROR" and entry["component"] == "Storage"
    assert entry["metadata"] == {"generationId": "gen_1", "poseId": "p"}
    assert entry["error"]["type"] == "OSError" and "bucket unreachable" in entry["error"]["message"]
    assert "Traceback" in entry["error"]["stack"]


def test_levels_below_the_configured_one_are_dropped() -> None:
    stream = io.StringIO()
    configure_logging("WARN", stream)
    log = get_logger("FLUX")
    log.info("quiet")
    log.warning("loud")
    assert [e["message"] for e in _entries(stream.getvalue())] == ["loud"]
    assert _entries(stream.getvalue())[0]["level"] == "WARN"


def test_performance_tracker_start_end_measure_and_decorator() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", stream)
    registry = CollectorRegistry()
    histogram = Histogram("t_seconds", "test", ["operation"], registry=registry)
    tracker = PerformanceTracker(histogram)

    tracker.start("generate-pose-123", "pose_total")
    time.sleep(0.02)
    duration = tracker.end("generate-pose-123")
    assert duration >= 20

    with tracker.measure("db_query") as measured:
        time.sleep(0.01)
    assert measured.duration_ms >= 10

    @tracker.measure("flux_api_call")
    async def call() -> str:
        await asyncio.sleep(0.01)
        return "image"

    assert asyncio.run(call()) == "image"
    counts = {s.labels["operation"]: s.value for s in registry.collect().__next__().samples
              if s.name == "t_seconds_count"}
    assert counts == {"pose_total": 1.0, "db_query": 1.0, "flux_api_call": 1.0}
    logged = [e for e in _entries(stream.getvalue()) if e["message"] == "Performance measured"]
    assert [e["metadata"]["operation"] for e in logged] == ["pose_total", "db_query", "flux_api_call"]
    assert all(e["component"] == "Metrics" for e in logged)


# A process whose threads log without pause forks children that each log one line: with a write lock left
# held by a thread that does not exist in the child, the child blocks on its first line forever.
_FORKING_WHILE_LOGGING = r"""
import logging, os, signal, sys, threading, time
from app.observability.logging import configure_logging, get_logger

configure_logging("INFO")
log, library = get_logger("Worker"), logging.getLogger("rq.worker")
stop = threading.Event()

def chatter(n):
    while not stop.is_set():
        log.info("Reaper chatter", thread=n, padding="x" * 2000)
        library.warning("Library chatter %s", n)

threads = [threading.Thread(target=chatter, args=(n,), daemon=True) for n in range(3)]
for t in threads:
    t.start()
hung = 0
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        log.info("Work-horse line")
        os._exit(0)
    deadline = time.monotonic() + 5
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            hung += 1
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.001)
    if hung:
        break
stop.set()
print("HUNG", hung, file=sys.stderr)
"""


def test_a_child_forked_while_threads_log_can_log(tmp_path) -> None:
    """A worker forks its work-horse while its reaper thread may be logging: the child must not inherit a
    held write lock (a work-horse blocked on its first log line left generations queued for an hour)."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "out.log"
    with out.open("w") as sink:
        done = subprocess.run([sys.executable, "-c", _FORKING_WHILE_LOGGING, "300"], stdout=sink,
                              stderr=subprocess.PIPE, text=True, timeout=240, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert "HUNG 0" in done.stderr, "a forked child blocked on its first log line"
    lines = out.read_text().splitlines()
    assert sum(1 for line in lines if '"Work-horse line"' in line) == 300
    assert all(line.startswith("{") and line.endswith("}") for line in lines), "every line one whole JSON entry"
