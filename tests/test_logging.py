"""Structured JSON logs in the seed's shape, and the performance tracker feeding logs and histograms."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, Histogram

from app.observability.logging import configure_logging, get_logger
from app.observability.performance import PerformanceTracker
from tests.stack import ROOT, Stack, claim_redis_db, free_port, redis_url, release_redis_db


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


SEED_KEYS = {"timestamp", "level", "component", "message", "metadata"}


def _not_seed_shaped(text: str) -> list[str]:
    """The lines of ``text`` that are not one JSON object of the seed's shape (``error`` being the one extra)."""
    bad = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not (isinstance(entry, dict) and set(entry) - {"error"} == SEED_KEYS
                and entry["level"] in {"DEBUG", "INFO", "WARN", "ERROR"} and isinstance(entry["metadata"], dict)):
            bad.append(line)
    return bad


class _Watched:
    """A ``posegen`` command whose stdout and stderr go to files of their own."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], folder: Path) -> None:
        self.name = name
        self.stdout_path, self.stderr_path = folder / f"{name}.out", folder / f"{name}.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT,
                                          stdout=out, stderr=err, start_new_session=True)

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert time.monotonic() < deadline, f"{self.name} never logged {text!r}:\n{self.output()[-3000:]}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def test_every_line_of_every_process_is_a_json_entry_while_the_database_is_down(tmp_path: Path) -> None:
    """With PostgreSQL unreachable, psycopg-pool's warnings (the API's pool), uvicorn's own error (a port in
    use), the workers' and pool members' and the exporter's lines, and each one's warning about a short JWT
    secret, are all JSON entries of the seed's shape, on stdout and stderr alike: no plain-text line."""
    redis_index = claim_redis_db()
    env = {**os.environ, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/posegen",
           "REDIS_URL": redis_url(redis_index), "POSEGEN_DATA_DIR": str(tmp_path / "data"),
           "POSEGEN_REAPER_INTERVAL_SECONDS": "0.5", "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
           # Short: each service warns that production would refuse it, as a JSON entry too.
           "JWT_SECRET": "short-secret"}
    api_port, exporter_port = free_port(), free_port()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    processes = [
        _Watched("api", ["api", "--port", str(api_port)], env, tmp_path),
        _Watched("api-on-a-busy-port", ["api", "--port", str(busy.getsockname()[1])], env, tmp_path),
        _Watched("worker", ["worker", "--metrics-port", "0"], env, tmp_path),
        _Watched("worker-pool", ["worker", "--processes", "2", "--metrics-port", "0"], env, tmp_path),
        _Watched("exporter", ["exporter", "--port", str(exporter_port)], env, tmp_path),
    ]
    api, busy_api, worker, pool, exporter = processes
    try:
        api.wait_for("psycopg.pool")  # the pool's own "error connecting" warnings
        assert httpx.get(f"http://127.0.0.1:{api_port}/api/apps/pose-generator/health", timeout=10).status_code == 503
        busy_api.popen.wait(timeout=60)
        assert "address already in use" in busy_api.output()
        worker.wait_for("Reaper pass failed")
        pool.wait_for('"inPool":true')
        pool.wait_for("Reaper pass failed")
        exporter.wait_for("Exporter listening")
        httpx.get(f"http://127.0.0.1:{exporter_port}/metrics", timeout=10)
        exporter.wait_for("Exporter source unavailable")
    finally:
        for process in processes:
            process.stop()
        busy.close()
        release_redis_db(redis_index)
    for process in processes:
        for path in (process.stdout_path, process.stderr_path):
            bad = _not_seed_shaped(path.read_text(errors="replace"))
            assert not bad, f"{process.name}'s {path.name} has lines that are not JSON entries:\n" + "\n".join(bad[:9])
    pool_warnings = [json.loads(line) for line in api.stdout_path.read_text().splitlines() if "psycopg.pool" in line]
    assert pool_warnings[0]["level"] == "WARN" and pool_warnings[0]["metadata"]["logger"] == "psycopg.pool"
    assert pool_warnings[0]["component"] == "API" and "connection" in pool_warnings[0]["message"]
    for process in (api, worker, exporter):
        assert "JWT_SECRET is 12 bytes" in process.stdout_path.read_text(), process.name
    members = {json.loads(line)["metadata"]["worker"] for line in pool.stdout_path.read_text().splitlines()
               if '"inPool":true' in line}
    assert len(members) == 2, "both pool members logged"


# Lines that reach a process's output around the root logger: Python's warnings module, a logger that does not
# propagate and has no handler (the standard library's last resort), an uncaught exception in a thread and in
# the main thread.
_AROUND_THE_ROOT_LOGGER = r"""
import logging, threading, warnings
from app.observability.logging import configure_logging

configure_logging("INFO", component="Worker")
warnings.warn("a library's warning", UserWarning)
lonely = logging.getLogger("lonely")
lonely.propagate = False
lonely.warning("nobody handles me")
thread = threading.Thread(target=lambda: 1 / 0, name="reaper")
thread.start()
thread.join()
raise RuntimeError("the end")
"""


def test_warnings_last_resort_and_uncaught_exceptions_are_json_entries() -> None:
    done = subprocess.run([sys.executable, "-c", _AROUND_THE_ROOT_LOGGER], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 1
    assert not _not_seed_shaped(done.stdout) and not _not_seed_shaped(done.stderr), done.stdout + done.stderr
    entries = _entries(done.stdout)
    assert all(e["component"] == "Worker" for e in entries), entries
    by_message = {e["message"]: e for e in entries}
    warning = next(e for e in entries if "a library's warning" in e["message"])
    assert warning["level"] == "WARN" and warning["metadata"]["logger"] == "py.warnings"
    assert by_message["nobody handles me"]["level"] == "WARN"
    in_thread = by_message["Uncaught exception in thread reaper"]
    assert in_thread["level"] == "ERROR" and in_thread["error"]["type"] == "ZeroDivisionError"
    assert "Traceback" in in_thread["error"]["stack"]
    last = by_message["Uncaught exception"]
    assert last["error"]["type"] == "RuntimeError" and last["error"]["message"] == "the end"
