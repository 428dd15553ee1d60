"""Exporter helpers shared by several test files (moved out of tests/test_exporter.py)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.errors import ErrorType
from tests.stack import Process, Stack, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

StartExporter = Callable[..., tuple[Process, int]]

STAGE_BOUNDS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)

HISTOGRAMS = {  # family -> (bucket bounds, SQL selecting the observed milliseconds)
    "pose_generation_duration_seconds": (
        (10, 30, 60, 120, 300),
        "SELECT duration_ms FROM generations WHERE status IN ('completed', 'failed') AND duration_ms IS NOT NULL"),
    "pose_provider_call_duration_seconds": (
        STAGE_BOUNDS,
        "SELECT provider_ms FROM generation_poses WHERE status <> 'pending' AND provider_ms IS NOT NULL"),
    "pose_upload_duration_seconds": (
        STAGE_BOUNDS, "SELECT upload_ms FROM generation_poses WHERE status <> 'pending' AND upload_ms IS NOT NULL"),
    "pose_queue_wait_duration_seconds": (
        STAGE_BOUNDS,
        "SELECT queue_wait_ms FROM generation_poses WHERE status <> 'pending' AND queue_wait_ms IS NOT NULL"),
    "pose_pose_duration_seconds": (
        STAGE_BOUNDS,
        "SELECT duration_ms FROM generation_poses WHERE status <> 'pending' AND duration_ms IS NOT NULL"),
}

@pytest.fixture(name="start_exporter")
def exporter_fixture() -> Iterator[Callable[..., tuple[Process, int]]]:
    """Start ``posegen exporter`` for a stack (environment overrides as keywords); stopped after the test."""
    started: list[Process] = []

    def start(stack: Stack, **env: str) -> tuple[Process, int]:
        port = free_port()
        process = Process(["exporter", "--port", str(port)], {**stack.env, **env},
                          stack.tmp / f"exporter-{port}.log")
        started.append(process)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    return process, port
            except httpx.HTTPError:
                pass
            assert process.alive(), process.output()
            time.sleep(0.1)
        raise AssertionError(f"exporter did not start:\n{process.output()}")

    yield start
    for process in started:
        process.stop()

def scrape(port: int, **headers: str) -> httpx.Response:
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer

def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}

def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]

def promtool_problems(text: str) -> str:
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    return "" if check.returncode == 0 and not (check.stdout + check.stderr).strip() else check.stdout + check.stderr

def expected_from_database(conn: psycopg.Connection[Any]) -> Samples:
    """What the exporter must show, computed from the rows themselves."""
    generations = dict(conn.execute("SELECT status, count(*) FROM generations GROUP BY status").fetchall())
    poses = dict(conn.execute("SELECT status, count(*) FROM generation_poses GROUP BY status").fetchall())
    errors = dict(conn.execute("SELECT error_type, count(*) FROM error_events GROUP BY error_type").fetchall())
    credits = dict(conn.execute("SELECT kind, sum(amount) FROM credit_ledger GROUP BY kind").fetchall())
    expected: Samples = {}

    def put(name: str, figure: float, **labels: str) -> None:
        expected[(name, tuple(sorted(labels.items())))] = float(figure)

    put("pose_generations_total", sum(generations.values()), status="created")
    for status in ("completed", "failed"):
        put("pose_generations_total", generations.get(status, 0), status=status)
        put("pose_poses_total", poses.get(status, 0), status=status)
    for status in ("queued", "processing"):
        put("pose_generations_in_progress", generations.get(status, 0), status=status)
    put("pose_poses_pending", poses.get("pending", 0))
    for error_type in ErrorType:
        put("pose_errors_total", errors.get(error_type.value, 0), error_type=error_type.value)
    put("pose_credits_spent_total", credits.get("charge", 0))
    put("pose_credits_refunded_total", credits.get("refund", 0))
    (users_failed,) = conn.execute(
        "SELECT count(DISTINCT user_id) FROM generations WHERE status = 'failed' "
        "AND finished_at > now() - interval '1 hour'").fetchone()
    put("pose_users_with_failed_generations", users_failed)
    for family, (bounds, query) in HISTOGRAMS.items():
        seconds = [row[0] / 1000 for row in conn.execute(query).fetchall()]
        for bound in bounds:
            put(f"{family}_bucket", sum(1 for s in seconds if s <= bound), le=str(float(bound)))
        put(f"{family}_bucket", len(seconds), le="+Inf")
        put(f"{family}_count", len(seconds))
        put(f"{family}_sum", sum(seconds))
    return expected

def assert_exporter_matches_database(samples: Samples, conn: psycopg.Connection[Any]) -> None:
    expected = expected_from_database(conn)
    wrong = {key: (samples.get(key), figure) for key, figure in expected.items()
             if samples.get(key) is None or abs(samples[key] - figure) > 1e-6}
    assert not wrong, f"exporter vs database (exported, expected): {wrong}"
    (last_finished,) = conn.execute(
        "SELECT extract(epoch FROM max(finished_at))::float8 FROM generations WHERE status IN ('completed', 'failed')"
    ).fetchone()
    assert value(samples, "pose_last_finished_generation_timestamp_seconds") == pytest.approx(last_finished, abs=0.002)
