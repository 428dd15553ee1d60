"""Every dashboard and rule expression stays a number, and no alert fires, when nothing happens.

The series are the real ones: the shared stack's API and worker and an exporter are scraped once, just
after start-up, and their samples (labels as the processes expose them, with ``job``/``instance`` as
Prometheus adds them) become the input of a ``promtool test rules`` file in three shapes:

- **idle**: every series flat for two hours (no traffic at all);
- **just started**: every series only a few scrapes old (the first minutes after a deploy);
- **stale**: every series stops after an hour (the targets went away; Prometheus marks them stale).

Each expression of each built dashboard panel and each recording rule and alert is checked at several
times of each shape for NaN and ±Inf samples; in the idle and just-started shapes no alert may fire
(Watchdog excepted) at any evaluation, so none can flap either.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from app import API_PREFIX
from app.api.prometheus_metrics import ZERO_STATUS_CODES
from app.canary import CanaryMetrics
from app.errors import ErrorType
from app.observability.performance import JOB_OPERATIONS
from app.queue import WORKER_STATES
from tests.stack import Process, Stack, free_port
from tests.support.idle_expressions import samples, scrape
from tests.support.monitoring import RULE_FILES, panel_targets, substitute

pytestmark = pytest.mark.tools

INTERVAL = "30s"
ALWAYS_FIRING = {"Watchdog"}


@pytest.fixture(scope="module")
def just_started(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, float]]:
    """Every series the API, a worker, the exporter and the canary expose at start-up, with its value."""
    tmp = tmp_path_factory.mktemp("idle")
    port = free_port()
    exporter = Process(["exporter", "--port", str(port)], stack.env, tmp / "exporter.log")
    try:
        series = {
            **samples(scrape(f"{stack.base_url}/api/apps/pose-generator/metrics-prometheus"), "posegen-api",
                      f"127.0.0.1:{stack.port}"),
            **samples(scrape(f"http://127.0.0.1:{stack.workers[0].metrics_port}/metrics"), "posegen-worker",
                      f"127.0.0.1:{stack.workers[0].metrics_port}"),
            **samples(scrape(f"http://127.0.0.1:{port}/metrics"), "posegen-exporter", f"127.0.0.1:{port}"),
            # The canary before its first run: its registry's exposition (a running canary would add a
            # generation to the shared stack), scraped as the canary job.
            **samples(generate_latest(CanaryMetrics("idle").registry).decode(), "posegen-canary", "127.0.0.1:9110"),
        }
    finally:
        exporter.stop()
    yield series


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every rule (recorded name and expression)."""
    found = [(f"{dashboard} / {title}", substitute(expr)) for dashboard, title, expr in panel_targets()]
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule.get("alert")
                found.append((f"{path.name} / {name}", rule["expr"]))
                if "record" in rule:
                    found.append((f"{path.name} / {name} (recorded)", rule["record"]))
    return found


def alert_names() -> list[str]:
    return [rule["alert"] for path in RULE_FILES
            for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
            for rule in group["rules"] if "alert" in rule]


def not_a_number_count(expr: str) -> str:
    """How many samples of ``expr`` are NaN or ±Inf (NaN is the one value not equal to itself); 0 when none."""
    return f"count((({expr}) != ({expr})) or (abs({expr}) == +Inf)) or vector(0)"


SHAPES: dict[str, dict[str, Any]] = {
    # values per series (V is its scraped value), evaluation times, whether alerts must stay silent
    "idle": {"values": "{v}x240", "times": ["5m", "30m", "1h", "90m", "2h"], "quiet": True},
    "just started": {"values": "{v}x8", "times": ["0m", "30s", "1m", "2m", "4m"], "quiet": True},
    "stale": {"values": "{v}x120 stale", "times": ["59m", "61m", "65m", "90m", "2h"], "quiet": False},
}


def promtool_file(tmp: Path, series: dict[str, float]) -> Path:
    checks = expressions()
    tests = []
    for shape, spec in SHAPES.items():
        input_series = [{"series": key, "values": spec["values"].format(v=repr(value))}
                        for key, value in sorted(series.items())]
        expr_tests = []
        for _where, expr in checks:
            for at in spec["times"]:
                expr_tests.append({"expr": not_a_number_count(expr), "eval_time": at,
                                   "exp_samples": [{"labels": "{}", "value": 0}]})
        alert_tests = []
        if spec["quiet"]:
            quiet_times = [f"{minute}m" for minute in range(0, 121, 5)] if shape == "idle" else spec["times"]
            alert_tests = [{"eval_time": at, "alertname": name, "exp_alerts": []}
                           for name in alert_names() if name not in ALWAYS_FIRING for at in quiet_times]
        tests.append({"name": shape, "interval": INTERVAL, "input_series": input_series,
                      "promql_expr_test": expr_tests, "alert_rule_test": alert_tests})
    path = tmp / "idle.test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(p) for p in RULE_FILES], "evaluation_interval": INTERVAL,
                                    "tests": tests}, sort_keys=False), encoding="utf-8")
    return path


def has(series: dict[str, float], name: str, **labels: str) -> bool:
    return any(key.startswith(name + "{") and all(f'{k}="{v}"' in key for k, v in labels.items()) for key in series)


def test_every_labelled_series_exists_at_zero_before_its_first_event(just_started: dict[str, float]) -> None:
    """First events: a labelled counter born at its first increment hides that increment from rate(), so each
    one an alert or panel reads is exposed from start-up (alerts/tests/first_events.test.yml shows why)."""
    routes = {key.split('route="', 1)[1].split('"', 1)[0] for key in just_started
              if key.startswith("pose_http_requests_total{")}
    assert f"{API_PREFIX}/generations" in routes and f"{API_PREFIX}/health" in routes, routes
    for route in routes - {"unmatched"}:
        codes = {key.split('status_code="', 1)[1].split('"', 1)[0] for key in just_started
                 if key.startswith("pose_http_requests_total{") and f'route="{route}"' in key}
        assert set(ZERO_STATUS_CODES) <= codes, (route, codes)
        assert has(just_started, "pose_http_request_duration_seconds_count", route=route), route
    for operation in JOB_OPERATIONS:
        assert has(just_started, "pose_operation_duration_seconds_count", operation=operation), operation
    for state in ("waiting", "active", "scheduled", "deferred", "failed", "finished"):
        assert has(just_started, "pose_queue_jobs", state=state), state
    for state in WORKER_STATES:
        assert has(just_started, "pose_workers", state=state), state
    for status in ("created", "completed", "failed"):
        assert has(just_started, "pose_generations_total", status=status), status
    for status in ("completed", "failed"):
        assert has(just_started, "pose_poses_total", status=status), status
    for error_type in ErrorType:
        assert has(just_started, "pose_errors_total", error_type=error_type.value), error_type
    for source in ("redis", "postgres"):
        assert has(just_started, "pose_exporter_up", source=source), source
    for name in ("pose_credits_spent_total", "pose_credits_refunded_total", "pose_generation_duration_seconds_count",
                 "pose_api_batch_size_count"):
        assert has(just_started, name), name


def test_no_expression_is_nan_or_infinite_and_no_alert_fires_when_idle(
        just_started: dict[str, float], tmp_path: Path) -> None:
    path = promtool_file(tmp_path, just_started)
    result = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
