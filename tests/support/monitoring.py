"""Prometheus and Alertmanager helpers shared by several test files (moved out of tests/test_live_monitoring.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from tests.fakes.webhook_sink import WebhookSink
from tests.stack import free_port

ROOT = Path(__file__).resolve().parents[2]

RULE_FILES = sorted((ROOT / "alerts" / "rules").glob("*.yml"))
# Scrape jobs whose targets have a live test of their own: left out of a test that does not run them.
OWN_LIVE_TESTS = {"posegen-canary": "tests/test_canary_alert.py"}

ALERTMANAGER_CONFIG = ROOT / "alerts" / "alertmanager.yml"

DEPLOY_PROMETHEUS = ROOT / "deploy" / "prometheus.yml"

DASHBOARD_BUILD = ROOT / "dashboards" / "build"

PROMETHEUS_BIN = "/usr/bin/prometheus"

ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"

# Grafana's template variables, replaced as a short-lived test would want them: rate windows of one
# minute (60 one-second scrapes), the whole range of the run within an hour.
TEMPLATE_VARIABLES = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval_ms": "1000",
    "${__interval_ms}": "1000",
    "$__interval": "1s",
    "${__interval}": "1s",
    "$__range_s": "3600",
    "${__range_s}": "3600",
    "$__range_ms": "3600000",
    "${__range_ms}": "3600000",
    "$__range": "1h",
    "${__range}": "1h",
    # The job and instance variables at "All".
    "$job": ".+",
    "$instance": ".+",
    # The environment variables (alerts/platform.yml's group_labels) at "All": series without the labels too.
    "$cluster": ".*",
    "$namespace": ".*",
}

T = TypeVar("T")

def wait_until(what: str, check: Callable[[], T], timeout: float, diagnostics: Callable[[], str] = str) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` with diagnostics otherwise."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
        except (httpx.HTTPError, OSError) as exc:
            result, last_error = None, exc  # type: ignore[assignment]
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last error: {last_error})\n{diagnostics()}")
        time.sleep(0.25)

class Daemon:
    """A server binary (Prometheus, Alertmanager) in its own session, its output in a log file."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

class PrometheusAPI:
    """The few calls of Prometheus's HTTP API the tests make."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def _data(self, path: str, **params: Any) -> Any:
        answer = self.http.get(path, params=params)
        answer.raise_for_status()
        body = answer.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self._data("/api/v1/query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._data("/api/v1/alerts")["alerts"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self._data("/api/v1/targets")["activeTargets"])

    def close(self) -> None:
        self.http.close()

def prometheus_config(targets: dict[str, list[str]], rule_files: list[Path], alertmanager: str) -> dict[str, Any]:
    """deploy/prometheus.yml with local static targets, one-second intervals and the test's Alertmanager."""
    deployed = yaml.safe_load(DEPLOY_PROMETHEUS.read_text(encoding="utf-8"))
    scrape_configs = []
    for job in deployed["scrape_configs"]:
        name = job["job_name"]
        if name in OWN_LIVE_TESTS and name not in targets:
            continue
        assert name in targets, f"deploy/prometheus.yml scrapes {name!r}, which the live test does not run"
        kept = {key: value for key, value in job.items() if not key.endswith("_sd_configs")}
        kept["static_configs"] = [{"targets": targets[name]}]
        scrape_configs.append(kept)
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": scrape_configs,
    }

def shorten_route_timings(route: dict[str, Any]) -> None:
    for key in ("group_wait", "group_interval"):
        if key in route:
            route[key] = "1s"
    if route.get("receiver") == "deadman":
        route["repeat_interval"] = "2s"  # the dead-man's switch hears from Alertmanager again and again
    for child in route.get("routes", []):
        shorten_route_timings(child)

def alertmanager_config(sink: WebhookSink) -> dict[str, Any]:
    """alerts/alertmanager.yml with every receiver posting to the sink; route tree kept."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))
    config["route"].setdefault("group_wait", "1s")
    config["route"].setdefault("group_interval", "1s")
    shorten_route_timings(config["route"])
    config["receivers"] = [
        {"name": receiver["name"], "webhook_configs": [{"url": sink.url(receiver["name"]), "send_resolved": True}]}
        for receiver in config["receivers"]
    ]
    return config

def panel_targets() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every query target of every built dashboard."""
    found = []

    def walk(name: str, panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(name, panel.get("panels", []))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((name, f"{panel['title']} [{target.get('refId', '')}]", target["expr"]))

    for path in sorted(DASHBOARD_BUILD.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        walk(path.name, dashboard.get("panels", []))
        for row in dashboard.get("rows", []):
            walk(path.name, row.get("panels", []))
    return found

def substitute(expr: str) -> str:
    for variable in sorted(TEMPLATE_VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, TEMPLATE_VARIABLES[variable])
    assert "$" not in expr, f"unknown template variable in {expr!r}"
    return expr

def start_alertmanager(tmp: Path, config: dict[str, Any], port: int) -> Daemon:
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    check = subprocess.run(["amtool", "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check
    return Daemon([ALERTMANAGER_BIN, f"--config.file={path}", f"--storage.path={tmp / 'alertmanager-data'}",
                   f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                  tmp / "alertmanager.log")

def ready(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def start_prometheus(tmp: Path, config: dict[str, Any], port: int) -> Daemon:
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    check = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check
    return Daemon([PROMETHEUS_BIN, f"--config.file={path}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                   f"--web.listen-address=127.0.0.1:{port}"],
                  tmp / "prometheus.log")


def project_config(sink: WebhookSink, secrets: Path) -> dict[str, Any]:
    """alerts/alertmanager.yml, receivers untouched but for where they deliver."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))
    shorten_route_timings(config["route"])
    config["route"]["group_wait"] = "1s"
    for route in config["route"]["routes"]:
        if route["receiver"] == "deadman":
            route["repeat_interval"] = "2s"
    secrets.mkdir(parents=True, exist_ok=True)
    for receiver in config["receivers"]:
        for pager in receiver.get("pagerduty_configs", []):
            key_file = secrets / "pager_routing_key"
            key_file.write_text("test-routing-key", encoding="utf-8")
            pager["routing_key_file"] = str(key_file)
            pager["url"] = sink.url(receiver["name"])
        for slack in receiver.get("slack_configs", []):
            url_file = secrets / f"{receiver['name']}_url"
            url_file.write_text(sink.url(receiver["name"]), encoding="utf-8")
            slack["api_url_file"] = str(url_file)
    return config


class Alertmanager:
    def __init__(self, tmp: Path, sink: WebhookSink) -> None:
        port = free_port()
        path = tmp / "alertmanager.yml"
        path.write_text(yaml.safe_dump(project_config(sink, tmp / "secrets"), sort_keys=False), encoding="utf-8")
        self.url = f"http://127.0.0.1:{port}"
        self.daemon = Daemon(["/usr/bin/prometheus-alertmanager", f"--config.file={path}",
                              f"--storage.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                              "--cluster.listen-address="], tmp / "alertmanager.log")
        wait_until("Alertmanager ready", lambda: ready(f"{self.url}/-/ready"), 30, self.daemon.output)

    def post(self, *alerts: dict[str, Any]) -> None:
        answer = httpx.post(f"{self.url}/api/v2/alerts", json=list(alerts), timeout=10)
        assert answer.status_code == 200, answer.text
