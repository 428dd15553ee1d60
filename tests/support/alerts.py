"""Alerts helpers shared by several test files (moved out of tests/test_alerts.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

ALERTS = ROOT / "alerts"

RULE_FILES = sorted((ALERTS / "rules").glob("*.yml"))

ALERTMANAGER = ALERTS / "alertmanager.yml"

HISTOGRAMS = {
    "pose_generation_duration_seconds",
    "pose_provider_call_duration_seconds",
    "pose_upload_duration_seconds",
    "pose_queue_wait_duration_seconds",
    "pose_pose_duration_seconds",
    "pose_http_request_duration_seconds",
    "pose_operation_duration_seconds",
    "pose_api_batch_size",
    "pose_provider_slot_wait_seconds",
    "pose_provider_task_duration_seconds",
}

# The metric names the exporter, the API and the workers promise (histograms as their series).
CONTRACT_METRICS = {
    "pose_generations_total",
    "pose_poses_total",
    "pose_errors_total",
    "pose_credits_spent_total",
    "pose_credits_refunded_total",
    "pose_last_finished_generation_timestamp_seconds",
    "pose_queue_depth",
    "pose_queue_jobs",
    "pose_workers",
    "pose_queue_oldest_waiting_job_age_seconds",
    "pose_exporter_up",
    "pose_exporter_scrape_duration_seconds",
    "pose_http_requests_total",
    # Why it is slow or stuck: provider slots, fleet counters (Redis), the oldest running attempt, releases.
    "pose_provider_slots_in_use",
    "pose_provider_slots_limit",
    "pose_provider_rate_limited_total",
    "pose_provider_retries_total",
    "pose_job_failures_total",
    "pose_generation_requeues_total",
    "pose_generation_attempts_exhausted_total",
    "pose_generation_oldest_running_age_seconds",
    "pose_generation_time_limit_seconds",
    # Which servers the exporter reads, and their changes: a failover (docs/operating.md "Failover").
    "pose_redis_server_info",
    "pose_database_server_info",
    "pose_database_in_recovery",
    "pose_exporter_server_changes_total",
    # The blast radius a page names (alerts/page_context.py).
    "pose_users_with_failed_generations",
    "pose_build_info",
    "pose_intake_paused",
    "pose_workers_paused",
    "pose_operator_actions_total",
    # A drill (POSEGEN_FAULTS) on: failures are injected.
    "pose_fault_drill_active",
    # The canary (posegen canary): its runs, whatever the users do.
    "pose_canary_runs_total",
    "pose_canary_failures_total",
    "pose_canary_consecutive_failures",
    "pose_canary_last_success_timestamp_seconds",
} | {f"{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")}

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}

def require_tool(name: str, package: str) -> str:
    """The tool's path, or a failed test telling how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: install the Debian package `{package}` "
            f"(apt-get install -y {package}, or `make tools`)",
            pytrace=False,
        )
    return path

def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)

def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and label names left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function call
        if match.group() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names

def load_rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]

def load_alerts() -> list[dict]:
    return [rule for rule in load_rules() if "alert" in rule]

def routes(*labels: str, verify: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [require_tool("amtool", "prometheus-alertmanager"), "config", "routes", "test"]
    argv.append(f"--config.file={ALERTMANAGER}")
    if verify:
        argv.append(f"--verify.receivers={verify}")
    return run(*argv, *labels)
