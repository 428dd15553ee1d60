"""Notifications name every alert of their group, through the project's real receivers.

A real Alertmanager runs ``alerts/alertmanager.yml`` with its receivers as they are — PagerDuty Events
v2 (``pager``), Slack-style webhooks (``chat``, ``deadman``) — except that the destination files hold
the addresses of a webhook sink (one path per receiver) and PagerDuty's events URL points at the sink.
Alerts are posted to its API the way Prometheus posts them: several alerts of one rule that differ only
in a label and in their annotations (one notification group), so ``.CommonAnnotations`` is empty and
only a template that lists each alert says what is wrong. (Warnings of an area with a critical alert
firing are inhibited, so the chat case uses an area without one.)

Test-only changes to the copy: destinations, and group_wait/group_interval/the Watchdog's
repeat_interval cut to seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.webhook_sink import Notification, WebhookSink
from tests.support.monitoring import Alertmanager

pytestmark = pytest.mark.tools

RULES = Path(__file__).resolve().parent.parent / "alerts" / "rules" / "pose-generator.rules.yml"


def rule(name: str) -> dict[str, Any]:
    for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]:
        for found in group["rules"]:
            if found.get("alert") == name:
                return dict(found)
    raise AssertionError(f"no alert {name} in {RULES}")


def alert(name: str, summary: str, description: str, **labels: str) -> dict[str, Any]:
    """An alert as Prometheus posts it: the rule's labels plus the series' labels, rendered annotations."""
    spec = rule(name)
    return {
        "labels": {"alertname": name, **spec["labels"], **labels},
        "annotations": {"summary": summary, "description": description,
                        "runbook_url": spec["annotations"]["runbook_url"]},
        "startsAt": (datetime.now(UTC) - timedelta(minutes=3)).isoformat(),
        "endsAt": (datetime.now(UTC) + timedelta(minutes=10)).isoformat(),
        "generatorURL": "http://prometheus.test/graph",
    }


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebhookSink, Alertmanager]]:
    tmp = tmp_path_factory.mktemp("notifications")
    with WebhookSink() as sink:
        manager = Alertmanager(tmp, sink)
        try:
            # The chat alerts first: while ExporterSourceDown fires it holds back every other area's alerts
            # (alerts/alertmanager.yml), so they are delivered before it is posted.
            manager.post(
                alert("KeySeriesAbsent", "No pose_queue_depth series in Prometheus", "pose_queue_depth missing.",
                      metric="pose_queue_depth"),
                alert("KeySeriesAbsent", "No pose_workers series in Prometheus", "pose_workers missing.",
                      metric="pose_workers"),
                alert("QueueDepthHigh", "Queue depth is 100 or more (busy)", "150 jobs are waiting or running.",
                      instance="exporter:9108"),
                alert("Watchdog", "The alerting pipeline is alive (this alert always fires)", "Always firing."),
            )
            for name in ("KeySeriesAbsent", "QueueDepthHigh"):
                on(sink, "chat", lambda body, n=name: n in body["attachments"][0]["title"], timeout=60)
            manager.post(
                alert("ExporterSourceDown", "The exporter cannot read redis",
                      "The exporter failed to read redis for 2 minutes.", source="redis", instance="exporter:9108"),
                alert("ExporterSourceDown", "The exporter cannot read postgres",
                      "The exporter failed to read postgres for 2 minutes.", source="postgres",
                      instance="exporter:9108"),
            )
            yield sink, manager
        finally:
            manager.daemon.stop()


def on(sink: WebhookSink, receiver: str, predicate: Any, timeout: float = 30) -> Notification:
    found = sink.wait_for(lambda notifications: any(n.path == f"/{receiver}" and predicate(n.body)
                                                    for n in notifications), timeout=timeout)
    return next(n for n in found if n.path == f"/{receiver}" and predicate(n.body))


def test_a_page_names_every_firing_alert_of_its_group(delivered: tuple[WebhookSink, Alertmanager]) -> None:
    sink, _ = delivered
    page = on(sink, "pager", lambda body: "[FIRING:2] ExporterSourceDown" in body.get("payload", {}).get("summary", ""))
    summary = page.body["payload"]["summary"]
    assert page.body["event_action"] == "trigger" and page.body["routing_key"] == "test-routing-key"
    assert "The exporter cannot read redis" in summary and "The exporter cannot read postgres" in summary, summary
    assert summary.startswith("[FIRING:2] ExporterSourceDown (availability):"), summary
    details = page.body["payload"]["custom_details"]
    assert "failed to read redis" in details["firing"] and "failed to read postgres" in details["firing"]
    assert "alerts/runbooks/ExporterSourceDown.md" in details["runbooks"]


def test_a_chat_message_names_every_alert_in_title_and_text(delivered: tuple[WebhookSink, Alertmanager]) -> None:
    sink, _ = delivered
    # Both alerts are posted at once, but a loaded Alertmanager may flush the group after the first (group_wait
    # is 1 s here): the next flush (group_interval, 1 s) names both.
    message = on(sink, "chat", lambda body: "[FIRING:2] KeySeriesAbsent" in body["attachments"][0]["title"])
    attachment = message.body["attachments"][0]
    assert "No pose_queue_depth series" in attachment["title"] and "No pose_workers series" in attachment["title"]
    assert attachment["title"].startswith("[FIRING:2] KeySeriesAbsent (warning, monitoring):"), attachment["title"]
    assert "pose_queue_depth missing." in attachment["text"] and "pose_workers missing." in attachment["text"]
    single = on(sink, "chat", lambda body: "QueueDepthHigh" in body["attachments"][0]["title"])
    assert "Queue depth is 100 or more (busy)" in single.body["attachments"][0]["title"]


def test_a_resolved_alert_leaves_the_others_named(delivered: tuple[WebhookSink, Alertmanager]) -> None:
    sink, manager = delivered
    on(sink, "pager", lambda body: "[FIRING:2] ExporterSourceDown" in body.get("payload", {}).get("summary", ""))
    resolved = alert("ExporterSourceDown", "The exporter cannot read redis",
                     "The exporter failed to read redis for 2 minutes.", source="redis", instance="exporter:9108")
    resolved["endsAt"] = datetime.now(UTC).isoformat()
    manager.post(resolved)
    # The resolution's page: one left firing, the resolved one listed (a loaded Alertmanager may have paged the
    # redis alert alone before both were grouped; that earlier page is not this one).
    page = on(sink, "pager", lambda body: body.get("payload", {}).get("summary", "").startswith(
        "[FIRING:1] ExporterSourceDown") and body["payload"].get("custom_details", {}).get("resolved"))
    assert "The exporter cannot read postgres" in page.body["payload"]["summary"]
    assert "The exporter cannot read redis" not in page.body["payload"]["summary"]
    assert "The exporter cannot read redis" in page.body["payload"]["custom_details"]["resolved"]


def test_the_watchdog_reaches_the_dead_mans_switch_again_and_again(
        delivered: tuple[WebhookSink, Alertmanager]) -> None:
    sink, _ = delivered

    def pings(notifications: list[Notification]) -> list[Notification]:
        return [n for n in notifications if n.path == "/deadman"]

    found = pings(sink.wait_for(lambda notifications: len(pings(notifications)) >= 3, timeout=30))
    assert all("Watchdog" in n.body["attachments"][0]["title"] for n in found)
    assert not any("Watchdog" in str(n.body) for n in sink.notifications() if n.path != "/deadman")
    gaps = [later.received_at - earlier.received_at for earlier, later in zip(found, found[1:], strict=False)]
    assert all(gap > 0.5 for gap in gaps), gaps  # repeats, not one burst
