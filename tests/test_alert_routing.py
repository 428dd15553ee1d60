"""Seed threshold alerts and SLO burn-rate alerts page once: amtool's router and a live Alertmanager agree.

The live part starts the real Alertmanager with the project's route tree (alerts/alertmanager.yml;
receivers pointed at a webhook sink, group timings cut to a second) and posts alerts to its API as Prometheus
would. What holds a symptom back while its cause pages (a threshold page the SLO page of its area, a
dependency down every area) is in the rules, not in Alertmanager: tests/test_page_lifecycle.py runs it with
Prometheus.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fakes.webhook_sink import WebhookSink
from tests.stack import free_port
from tests.support.alerts import ALERTMANAGER, load_alerts, require_tool, routes
from tests.support.monitoring import Daemon, alertmanager_config, ready, start_alertmanager, wait_until

pytestmark = pytest.mark.tools

SLO_PAGE = {"alertname": "GenerationSuccessBudgetBurn", "severity": "critical", "area": "generation",
            "slo": "generation-success", "tier": "page", "burn_window": "1h"}
SLO_TICKET = {**SLO_PAGE, "severity": "warning", "tier": "ticket", "burn_window": "3d"}
THRESHOLD = {"alertname": "HighFailureRate", "severity": "critical", "area": "generation"}
LATENCY_PAGE = {"alertname": "PoseLatencyBudgetBurn", "severity": "critical", "area": "performance",
                "slo": "pose-latency", "tier": "page", "burn_window": "6h"}


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [(SLO_PAGE, "pager"), (SLO_TICKET, "chat"), (LATENCY_PAGE, "pager")],
)
def test_slo_tiers_route_by_severity(labels: dict[str, str], receiver: str) -> None:
    result = routes(*(f"{key}={value}" for key, value in labels.items()), verify=receiver)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_slo_alert_tier_has_its_receiver() -> None:
    tiers = [alert for alert in load_alerts() if "slo" in alert["labels"]]
    assert len(tiers) == 9
    for alert in tiers:
        receiver = {"critical": "pager", "warning": "chat"}[alert["labels"]["severity"]]
        result = routes(f"alertname={alert['alert']}", *(f"{k}={v}" for k, v in alert["labels"].items()),
                        verify=receiver)
        assert result.returncode == 0, result.stdout + result.stderr


class Alertmanager:
    def __init__(self, daemon: Daemon, url: str, sink: WebhookSink) -> None:
        self.daemon, self.url, self.sink = daemon, url, sink

    def post(self, *alerts: dict[str, str]) -> None:
        now = datetime.now(UTC)
        body = [{"labels": labels, "annotations": {"summary": labels["alertname"]},
                 "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=5)).isoformat()}
                for labels in alerts]
        httpx.post(f"{self.url}/api/v2/alerts", json=body, timeout=10).raise_for_status()

    def state(self, alertname: str) -> dict:
        answer = httpx.get(f"{self.url}/api/v2/alerts", params={"filter": f"alertname={alertname}"}, timeout=10)
        answer.raise_for_status()
        found = answer.json()
        return found[0]["status"] if found else {}

    def paged(self) -> set[str]:
        return {alert["labels"]["alertname"] for n in self.sink.notifications() if n.receiver == "pager"
                for alert in n.alerts("firing")}


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    with _running_alertmanager(tmp_path_factory.mktemp("routing")) as running:
        yield running


@contextlib.contextmanager
def _running_alertmanager(tmp: Path) -> Iterator[Alertmanager]:
    require_tool("amtool", "prometheus-alertmanager")
    with WebhookSink() as sink:
        port = free_port()
        daemon = start_alertmanager(tmp, alertmanager_config(sink), port)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until("Alertmanager ready", lambda: ready(f"{url}/-/ready"), 30, daemon.output)
            yield Alertmanager(daemon, url, sink)
        finally:
            daemon.stop()


def test_an_slo_page_alone_pages_once_for_both_page_tiers(alertmanager: Alertmanager) -> None:
    """No threshold alert covers a latency burn: the burn-rate page gets through, both page tiers in one page."""
    alertmanager.post(LATENCY_PAGE, {**LATENCY_PAGE, "burn_window": "1h"})
    alertmanager.sink.wait_for(lambda found: "PoseLatencyBudgetBurn" in alertmanager.paged(), timeout=30)
    assert not alertmanager.state("PoseLatencyBudgetBurn").get("inhibitedBy")
    pages = [n for n in alertmanager.sink.notifications() if n.receiver == "pager"
             and n.body["groupLabels"].get("alertname") == "PoseLatencyBudgetBurn"]
    assert {a["labels"]["burn_window"] for a in pages[0].alerts("firing")} == {"1h", "6h"}


# --- what the pager and chat receive ---------------------------------------------------------------

FIRING = {
    "labels": {"alertname": "HighFailureRate", "severity": "critical", "area": "generation"},
    "annotations": {
        "summary": "More than 10% of generations failed over the last hour",
        "description": "36% of the generations finished in the last hour failed (critical above 10%).",
        "runbook_url": "https://github.com/posegen/pose-generator/blob/main/alerts/runbooks/HighFailureRate.md",
        "dashboard_url": "http://localhost:3000/d/posegen-overview?orgId=1&viewPanel=3&from=1&to=2",
        "top_error_type": "FLUX_API_ERROR (12 in the last hour)",
    },
}


def receivers_to_sink(sink: WebhookSink) -> dict:
    """alerts/alertmanager.yml with its PagerDuty and Slack receivers kept (templates and all), their
    destinations pointed at the sink instead of the files under /etc/posegen."""
    config = alertmanager_config(sink)
    project = yaml.safe_load(ALERTMANAGER.read_text())
    for receiver in project["receivers"]:
        for pager in receiver.get("pagerduty_configs", []):
            del pager["routing_key_file"]
            pager["routing_key"] = "test-routing-key"
            pager["url"] = sink.url("/pagerduty")
        for chat in receiver.get("slack_configs", []):
            del chat["api_url_file"]
            chat["api_url"] = sink.url("/slack")
    config["receivers"] = project["receivers"]
    return config


def test_pages_and_chat_messages_carry_value_links_and_top_error_type(tmp_path: Path) -> None:
    with WebhookSink() as sink:
        port = free_port()
        daemon = start_alertmanager(tmp_path, receivers_to_sink(sink), port)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until("Alertmanager ready", lambda: ready(f"{url}/-/ready"), 30, daemon.output)
            now = datetime.now(UTC)
            warning = {"labels": {**FIRING["labels"], "alertname": "RefundRateHigh", "area": "credits",
                                  "severity": "warning"}, "annotations": FIRING["annotations"]}
            body = [{**alert, "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=5)).isoformat()}
                    for alert in (FIRING, warning)]
            httpx.post(f"{url}/api/v2/alerts", json=body, timeout=10).raise_for_status()
            found = sink.wait_for(lambda got: {n.path for n in got} >= {"/pagerduty", "/slack"}, timeout=60)
        finally:
            daemon.stop()
    page = next(n.body for n in found if n.path == "/pagerduty")
    annotations = FIRING["annotations"]
    details = page["payload"]["custom_details"]
    assert annotations["description"] in details["firing"]
    assert details["runbook"] == annotations["runbook_url"]
    assert details["dashboard"] == annotations["dashboard_url"]
    assert details["top_error_type"] == annotations["top_error_type"]
    assert {link["text"]: link["href"] for link in page["links"]} == {
        "Runbook": annotations["runbook_url"], "Dashboard": annotations["dashboard_url"]}
    chat = json.dumps(next(n.body for n in found if n.path == "/slack"))
    for text in (annotations["description"], annotations["runbook_url"], "Top error type: FLUX_API_ERROR"):
        assert json.dumps(text)[1:-1] in chat, text
    assert json.dumps(annotations["dashboard_url"])[1:-1] in chat
