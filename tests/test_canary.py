"""`posegen canary`: successful runs show in its metrics and keep the ledger true; each failure is a JSON log entry
with its reason; bad settings refuse start-up in one line. (The alert it feeds: tests/test_canary_alert.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.api.auth import Role
from app.canary import CANARY_USER
from tests.stack import ROOT, Process, Stack, check_ledger_invariants, free_port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The canary's /metrics as {(sample name, sorted labels): value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def runs(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], outcome: str) -> float:
    return metrics.get(("pose_canary_runs_total", (("outcome", outcome),)), -1.0)


def wait_for(what: str, check: Any, timeout: float, diagnostics: Any = str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (httpx.HTTPError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{diagnostics()}")
        time.sleep(0.2)


def log_entries(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def canary_env(stack: Stack, **extra: str) -> dict[str, str]:
    return {**stack.env, "POSEGEN_API_URL": stack.base_url, "POSEGEN_CANARY_INTERVAL_SECONDS": "1", **extra}


def test_successful_runs_publish_the_metrics_and_their_credits_keep_the_ledger_true(stack: Stack,
                                                                                     tmp_path: Path) -> None:
    """Every run tops up exactly its shortfall by a grant of its own (created_by posegen-canary) and is charged as
    any user; the ledger invariants hold and the balance comes back to 0 after each run."""
    port = free_port()
    canary = Process(["canary", "--metrics-port", str(port)], canary_env(stack), tmp_path / "canary.log")
    try:
        metrics = wait_for("three successful canary runs", lambda: (m := scrape(port)) and runs(m, "success") >= 3
                           and m, 60, canary.output)
        assert runs(metrics, "failure") == 0, canary.output()
        assert metrics[("pose_canary_consecutive_failures", ())] == 0
        last_success = metrics[("pose_canary_last_success_timestamp_seconds", ())]
        assert time.time() - 30 < last_success <= time.time()
        assert metrics[("pose_canary_run_duration_seconds_count", (("outcome", "success"),))] >= 3
        assert metrics[("pose_build_info", (("revision", "unknown"), ("version", __import__("app").__version__)))] == 1
        assert all(value == 0 for (name, _), value in metrics.items() if name == "pose_canary_failures_total")
    finally:
        canary.stop()
    entries = log_entries(canary.output())
    succeeded = [e for e in entries if e["message"] == "Canary run succeeded"]
    assert len(succeeded) >= 3 and all(e["component"] == "Canary" for e in succeeded)
    with stack.db() as conn:
        check_ledger_invariants(conn)
        grants = conn.execute("SELECT amount, created_by FROM credit_ledger WHERE user_id = %s AND kind = 'grant'",
                              (CANARY_USER,)).fetchall()
        charges = conn.execute("SELECT count(*), coalesce(sum(amount), 0) FROM credit_ledger"
                               " WHERE user_id = %s AND kind = 'charge'", (CANARY_USER,)).fetchone()
        generations = conn.execute("SELECT count(*) FROM generations WHERE user_id = %s", (CANARY_USER,)).fetchone()
    assert grants and {created_by for _, created_by in grants} == {CANARY_USER}
    assert sum(amount for amount, _ in grants) == charges[1], "grants exactly cover what the runs were charged"
    # A run stopped half way (the SIGTERM above) may have created one more: charged, not counted either way.
    assert charges[0] == generations[0] and len(succeeded) <= generations[0] <= len(succeeded) + 1
    assert stack.balance(CANARY_USER) == 0
    # Its generations are a user's like any other: listed to it through the API.
    listed = stack.http.get("/generations", headers=stack.headers(CANARY_USER)).json()
    assert listed["total"] == generations[0]
    top = stack.http.get("/metrics/top-users", params={"limit": 100}, headers=stack.headers("admin", Role.ADMIN))
    assert top.status_code == 200 and CANARY_USER in top.text, top.text  # counted as a user (docs/observability.md)


def test_each_failure_is_one_json_entry_naming_its_reason(fresh_stack: Any, tmp_path: Path) -> None:
    """`posegen canary --once` against an API that is down, and against a queue no worker reads (not terminal
    within POSEGEN_CANARY_TIMEOUT_SECONDS): exit 1, one WARN entry with the reason."""
    nothing_there = f"http://127.0.0.1:{free_port()}"
    down = subprocess.run([sys.executable, "-m", "app.cli", "canary", "--once"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "POSEGEN_API_URL": nothing_there})
    assert down.returncode == 1, down.stdout + down.stderr
    [failed] = [e for e in log_entries(down.stdout) if e["message"] == "Canary run failed"]
    assert failed["level"] == "WARN" and failed["metadata"]["reason"] == "api_unreachable", failed

    stuck = fresh_stack(workers=0)
    started = time.monotonic()
    answer = subprocess.run([sys.executable, "-m", "app.cli", "canary", "--once"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env=canary_env(stuck, POSEGEN_CANARY_TIMEOUT_SECONDS="3"))
    assert answer.returncode == 1, answer.stdout + answer.stderr
    assert time.monotonic() - started < 30
    [failed] = [e for e in log_entries(answer.stdout) if e["message"] == "Canary run failed"]
    assert failed["metadata"]["reason"] == "not_terminal" and failed["metadata"]["generationId"], failed
    assert "still queued after 3 s" in failed["metadata"]["detail"]


def test_bad_canary_settings_refuse_start_up_in_one_line() -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cases = [
        ({"POSEGEN_CANARY_INTERVAL_SECONDS": "0"}, "POSEGEN_CANARY_INTERVAL_SECONDS='0' must be at least 1"),
        ({"POSEGEN_CANARY_INTERVAL_SECONDS": "601"}, "must be at most 600"),
        ({"POSEGEN_CANARY_INTERVAL_SECONDS": "soon"}, "POSEGEN_CANARY_INTERVAL_SECONDS='soon' is not a number"),
        ({"POSEGEN_CANARY_TIMEOUT_SECONDS": "0.5"}, "POSEGEN_CANARY_TIMEOUT_SECONDS='0.5' must be at least 1"),
        ({"POSEGEN_CANARY_INTERVAL_SECONDS": "600", "POSEGEN_CANARY_TIMEOUT_SECONDS": "300"},
         "CanaryFailing could not page within 15 minutes of an outage"),
        # Within each bound, but a stuck queue (each run failing at its timeout) would page after 16 minutes.
        ({"POSEGEN_CANARY_INTERVAL_SECONDS": "600", "POSEGEN_CANARY_TIMEOUT_SECONDS": "240"},
         "POSEGEN_CANARY_INTERVAL_SECONDS=600 plus twice POSEGEN_CANARY_TIMEOUT_SECONDS=240 is over 695 s"),
        ({"POSEGEN_CANARY_METRICS_PORT": "70000"}, "POSEGEN_CANARY_METRICS_PORT='70000' must be at most 65535"),
        ({"POSEGEN_CANARY_METRICS_PORT": str(busy.getsockname()[1])}, "cannot be listened on"),
    ]
    try:
        started = [subprocess.Popen([sys.executable, "-m", "app.cli", "canary"], cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env={"PATH": os.environ["PATH"], **env}) for env, _ in cases]
        for (env, expected), process in zip(cases, started, strict=True):
            _, stderr = process.communicate(timeout=60)
            assert process.returncode == 2, (env, stderr)
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (env, stderr)
    finally:
        busy.close()
