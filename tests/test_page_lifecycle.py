"""No page left open, and pages that explain themselves: real Prometheus, real Alertmanager, real receivers.

A real Prometheus evaluates the project's rule files (alerts/rules/*.yml, with the suppression that
``posegen alerts build`` writes, alerts/suppression.py) over a scrape target the test sets
(tests/fakes/metrics_target.py), and sends to a real Alertmanager running ``alerts/alertmanager.yml`` with
its PagerDuty and Slack receivers as they are, delivering to a webhook sink (tests/test_notifications.py).

Alertmanager never resolves what it inhibited when it resolved (prometheus/alertmanager#2754); each
scenario makes a symptom page, then its cause fire, then the symptom end while the cause fires -- where an
inhibit rule would have left the symptom's page open -- and checks that every PagerDuty incident triggered
(one ``dedup_key`` per Alertmanager group) got its resolve and every chat message its ``[RESOLVED]`` one.
A symptom that starts while its cause fires must never fire.

Test-only changes to copies of the rule files: ``for:`` of the alerts driven here cut to seconds
(:data:`FOR`), ``keep_firing_for`` dropped, range windows cut to seconds (:data:`WINDOWS`) so rates follow
the target within the test; Prometheus scrapes and evaluates every second and adds the environment's
external labels (``cluster``, ``namespace``); Alertmanager's group_wait/group_interval are a second.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.metrics_target import MetricsTarget
from tests.fakes.webhook_sink import Notification, WebhookSink
from tests.stack import free_port
from tests.support.alerts import ALERTMANAGER, require_tool
from tests.support.monitoring import (
    RULE_FILES,
    Alertmanager,
    Daemon,
    PrometheusAPI,
    ready,
    start_prometheus,
    wait_until,
)

FOR = {"WorkerDowntime": "1s", "ExporterSourceDown": "1s", "QueueOverloaded": "1s", "QueueDepthHigh": "1s",
       "QueueBacklog": "1s", "HighFailureRate": "8s", "GenerationSuccessBudgetBurn": "1s"}
WINDOWS = {"5m": "5s", "10m": "10s", "15m": "10s", "30m": "10s", "1h": "15s", "2h": "20s", "6h": "30s", "1d": "60s",
           "3d": "60s", "30d": "60s"}
ENVIRONMENT = {"cluster": "test-eu1", "namespace": "posegen-live"}
# Processes (job, instance) -> (version, revision, seconds since start): 2.0.0 is the last deploy, its
# first process started an hour ago.
PROCESSES = {("posegen-worker", "worker-a"): ("1.9.0", "aaa1111", 2 * 86400),
             ("posegen-worker", "worker-b"): ("2.0.0", "bbb2222", 3600),
             ("posegen-exporter", "exporter-a"): ("2.0.0", "bbb2222", 1800)}
USERS_AFFECTED = 7


def rules_for_test(out_dir: Path) -> list[Path]:
    """Copies of the project's rule files with :data:`FOR`, no ``keep_firing_for`` and :data:`WINDOWS`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    # The canary's rule has a live test of its own (tests/test_canary_alert.py); no canary runs here.
    for source in (path for path in RULE_FILES if path.name != "canary.rules.yml"):
        document = yaml.safe_load(source.read_text(encoding="utf-8"))
        for group in document["groups"]:
            for rule in group["rules"]:
                rule["expr"] = re.sub(r"\[(\d+[mhd])\]", lambda m: f"[{WINDOWS[m.group(1)]}]", rule["expr"])
                if rule.get("alert") in FOR and rule["labels"].get("tier") != "ticket":
                    rule["for"] = FOR[rule["alert"]]
                rule.pop("keep_firing_for", None)
        path = out_dir / source.name
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        paths.append(path)
    return paths


@dataclass
class Monitoring:
    target: MetricsTarget
    sink: WebhookSink
    prometheus: Daemon
    prom: PrometheusAPI
    alertmanager: Alertmanager

    def diagnostics(self) -> str:
        return (f"--- prometheus ---\n{self.prometheus.output()[-3000:]}\n"
                f"--- alertmanager ---\n{self.alertmanager.daemon.output()[-3000:]}\n"
                f"--- sink ---\n{[(n.path, summary(n)) for n in self.sink.notifications()]}")

    def pages(self) -> list[dict[str, Any]]:
        return [n.body for n in self.sink.notifications() if n.path == "/pager"]

    def chats(self) -> list[dict[str, Any]]:
        return [n.body["attachments"][0] for n in self.sink.notifications() if n.path == "/chat"]

    def page(self, alertname: str, action: str = "trigger", timeout: float = 60) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((p for p in self.pages() if p["event_action"] == action
                         and p["payload"]["class"] == alertname), None) if action == "trigger" else next(
                (p for p in self.pages() if p["event_action"] == action
                 and p["dedup_key"] == self.page(alertname)["dedup_key"]), None)

        return wait_until(f"PagerDuty {action} of {alertname}", found, timeout, self.diagnostics)

    def chat(self, alertname: str, status: str = "FIRING", timeout: float = 60) -> dict[str, Any]:
        return wait_until(f"chat {status} of {alertname}", lambda: next(
            (c for c in self.chats() if c["title"].startswith(f"[{status}") and f"] {alertname} (" in c["title"]),
            None), timeout, self.diagnostics)

    def rule_states(self, alertname: str) -> list[tuple[str, float]]:
        """(state, last evaluation as epoch seconds) of every rule named ``alertname``."""
        answer = self.prom.http.get("/api/v1/rules", params={"type": "alert"})
        answer.raise_for_status()
        return [(rule["state"], epoch(rule["lastEvaluation"]))
                for group in answer.json()["data"]["groups"] for rule in group["rules"] if rule["name"] == alertname]

    def firing(self, alertname: str) -> bool:
        return any(state == "firing" for state, _ in self.rule_states(alertname))

    def held_back(self, alertname: str, condition: str) -> None:
        """``condition`` (PromQL) holds in Prometheus, and ``alertname`` (``for:`` a second) stays inactive
        through evaluations three seconds past the first moment it held: it would have fired by then."""
        wait_until(f"{condition} visible", lambda: self.prom.query(condition), 30, self.diagnostics)
        seen = time.time()
        while True:
            states = self.rule_states(alertname)
            assert all(state == "inactive" for state, _ in states), (alertname, states, self.diagnostics())
            if states and min(evaluated for _, evaluated in states) > seen + 3:
                break
            time.sleep(0.25)
        assert not any(p["payload"]["class"] == alertname for p in self.pages())
        assert not any(f"] {alertname} (" in c["title"] for c in self.chats())


def epoch(rfc3339: str) -> float:
    """Prometheus's RFC 3339 time (nanoseconds, ``Z``) as epoch seconds."""
    whole, _, fraction = rfc3339.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6]:0<6}+00:00").timestamp()


def summary(notification: Notification) -> str:
    body = notification.body
    if notification.path == "/pager":
        return f"{body['event_action']} {body['dedup_key'][:8]} {body['payload']['summary'][:60]}"
    return str(body.get("attachments", [{}])[0].get("title", ""))[:80]


def healthy(target: MetricsTarget) -> None:
    # Times from now, not from the module's import: in a whole run the module is imported many minutes before
    # its tests, and "the last deploy started an hour ago" must be read an hour and a few minutes later.
    now = time.time()
    for source in ("redis", "postgres"):
        target.set("pose_exporter_up", 1, source=source)
    target.set("pose_workers", 2, state="idle")
    target.set("pose_queue_depth", 0)
    target.set("pose_queue_jobs", 0, state="waiting")
    target.set("pose_last_finished_generation_timestamp_seconds", now + 86400)  # "just now" all along
    target.set("pose_users_with_failed_generations", USERS_AFFECTED)
    target.rate("pose_generations_total", 0, status="completed")
    target.rate("pose_generations_total", 0, status="failed")
    for (job, instance), (version, revision, age) in PROCESSES.items():
        target.set("pose_build_info", 1, job=job, instance=instance, version=version, revision=revision)
        target.set("process_start_time_seconds", now - age, job=job, instance=instance)


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitoring]:
    require_tool("promtool", "prometheus")
    require_tool("amtool", "prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("page-lifecycle")
    with WebhookSink() as sink, MetricsTarget() as target:
        healthy(target)
        (tmp / "alertmanager").mkdir()
        alertmanager = Alertmanager(tmp / "alertmanager", sink)
        prometheus = None
        try:
            port = free_port()
            config = {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s",
                           "external_labels": ENVIRONMENT},
                "rule_files": [str(path) for path in rules_for_test(tmp / "rules")],
                "alerting": {"alertmanagers": [{"static_configs": [
                    {"targets": [alertmanager.url.removeprefix("http://")]}]}]},
                "scrape_configs": [{"job_name": "posegen-exporter", "honor_labels": True,
                                    "static_configs": [{"targets": ["{}:{}".format(*target.address)]}]}],
            }
            prometheus = start_prometheus(tmp, config, port)
            prom = PrometheusAPI(f"http://127.0.0.1:{port}")
            wait_until("Prometheus ready", lambda: ready(f"http://127.0.0.1:{port}/-/ready"), 30, prometheus.output)
            wait_until("the target scraped", lambda: prom.query("pose_queue_depth"), 30, prometheus.output)
            yield Monitoring(target, sink, prometheus, prom, alertmanager)
        finally:
            if prometheus is not None:
                prometheus.stop()
            alertmanager.daemon.stop()


def assert_everything_sent_was_resolved(monitoring: Monitoring, names: set[str]) -> None:
    """Every PagerDuty incident of ``names`` triggered got its resolve; so did every chat message."""
    def open_items() -> list[str]:
        pages: dict[str, str] = {}
        for page in monitoring.pages():
            if page["payload"]["class"] in names or page["event_action"] == "resolve":
                pages[page["dedup_key"]] = page["event_action"]
        chats: dict[str, str] = {}
        for chat in monitoring.chats():
            match = re.match(r"\[(FIRING|RESOLVED)[^\]]*\] (\w+) ", chat["title"])
            if match and match.group(2) in names:
                chats[match.group(2)] = match.group(1)
        return [f"page {key}" for key, action in pages.items() if action != "resolve"] + [
            f"chat {name}" for name, status in chats.items() if status != "RESOLVED"]

    wait_until("every page and chat message resolved", lambda: not open_items() or None, 60,
               lambda: f"open: {open_items()}\n{monitoring.diagnostics()}")


def test_a_page_sent_before_its_dependency_went_down_is_resolved_and_explains_itself(
        monitoring: Monitoring) -> None:
    """WorkerDowntime pages; ExporterSourceDown fires; a queue overload starting now pages nobody; the workers
    come back while PostgreSQL is still down (an inhibit rule would have swallowed this resolve); PostgreSQL
    comes back. Both incidents are resolved. The first page names environment, versions, last deploy, users."""
    target = monitoring.target
    target.set("pose_workers", 0, state="idle")
    page = monitoring.page("WorkerDowntime")
    payload = page["payload"]
    assert (payload["component"], payload["group"], payload["class"]) == (
        "workers", "pose-generator test-eu1/posegen-live", "WorkerDowntime"), payload
    details = payload["custom_details"]
    assert details["environment"] == "cluster test-eu1, namespace posegen-live", details
    assert details["summaries"] == "- Workers are not processing generations\n", details
    assert details["versions"] == "1.9.0 (aaa1111): 1 running, 2.0.0 (bbb2222): 2 running", details
    assert re.fullmatch(r"2\.0\.0 \(bbb2222\) started 1h [0-4]m \d+s ago", details["last_deploy"]), details
    assert details["users_affected"] == f"{USERS_AFFECTED} users with a failed generation in the last hour", details

    target.set("pose_exporter_up", 0, source="postgres")
    monitoring.page("ExporterSourceDown")
    assert monitoring.firing("WorkerDowntime")  # already paged: not held back, still firing
    target.set("pose_queue_depth", 600)
    monitoring.held_back("QueueOverloaded", "max(pose_queue_depth) > 500")
    target.set("pose_queue_depth", 0)

    target.set("pose_workers", 2, state="idle")
    monitoring.page("WorkerDowntime", "resolve")
    assert monitoring.firing("ExporterSourceDown")  # the symptom's page closed while its cause still fires
    target.set("pose_exporter_up", 1, source="postgres")
    monitoring.page("ExporterSourceDown", "resolve")
    assert_everything_sent_was_resolved(monitoring, {"WorkerDowntime", "ExporterSourceDown"})


def test_a_warning_in_chat_before_its_critical_is_resolved_in_chat(monitoring: Monitoring) -> None:
    """QueueDepthHigh reaches chat; QueueOverloaded pages; a backlog warning starting now stays out of chat;
    the queue drains. The chat message names the same context as the page."""
    target = monitoring.target
    target.set("pose_queue_depth", 150)
    chat = monitoring.chat("QueueDepthHigh")
    page = monitoring.page("WorkerDowntime")["payload"]["custom_details"]
    text = chat["text"]
    for line in (f"Environment: {page['environment']}", f"Versions: {page['versions']}",
                 f"Users affected: {page['users_affected']}"):
        assert line in text, (line, text)
    assert re.search(r"Last deploy: 2\.0\.0 \(bbb2222\) started 1h [0-4]m \d+s ago", text), text

    target.set("pose_queue_depth", 600)
    monitoring.page("QueueOverloaded")
    assert monitoring.firing("QueueDepthHigh")
    target.set("pose_queue_jobs", 600, state="waiting")
    monitoring.held_back("QueueBacklog", 'max(pose_queue_jobs{state="waiting"}) > 500')

    target.set("pose_queue_jobs", 0, state="waiting")
    target.set("pose_queue_depth", 0)
    monitoring.chat("QueueDepthHigh", "RESOLVED")
    monitoring.page("QueueOverloaded", "resolve")
    assert_everything_sent_was_resolved(monitoring, {"QueueDepthHigh", "QueueOverloaded", "QueueBacklog"})


def test_a_burn_rate_page_sent_before_the_threshold_page_is_resolved(monitoring: Monitoring) -> None:
    """Every generation fails: the burn-rate page (for 1s here) pages before HighFailureRate (8s), which
    used to hold it back; failures stop, the burn rate's short window clears first -- its resolve arrives."""
    target = monitoring.target
    target.rate("pose_generations_total", 3, status="failed")
    burn = monitoring.page("GenerationSuccessBudgetBurn")
    wait_until("HighFailureRate firing", lambda: monitoring.firing("HighFailureRate"), 60, monitoring.diagnostics)
    threshold = monitoring.page("HighFailureRate")
    assert burn["dedup_key"] != threshold["dedup_key"]
    target.rate("pose_generations_total", 0, status="failed")
    target.rate("pose_generations_total", 3, status="completed")
    monitoring.page("GenerationSuccessBudgetBurn", "resolve")
    monitoring.page("HighFailureRate", "resolve")
    assert_everything_sent_was_resolved(monitoring, {"GenerationSuccessBudgetBurn", "HighFailureRate"})


def test_nothing_inhibits_in_alertmanager() -> None:
    """Suppression lives in the rules; an inhibit rule would mute resolves again (alerts/suppression.py)."""

    assert not yaml.safe_load(ALERTMANAGER.read_text())["inhibit_rules"]
