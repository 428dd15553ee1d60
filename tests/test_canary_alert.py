"""Live proof of CanaryFailing: with the provider failing every pose and NO user traffic at all, the real
Prometheus (scraping the canary and the exporter with deploy/prometheus.yml's jobs) fires CanaryFailing and the
real Alertmanager (alerts/alertmanager.yml, its PagerDuty receiver as configured) pages a fake PagerDuty; once
the provider is healthy again the next run succeeds and the page is resolved.

Test-only changes, made to copies in tmp_path: the canary runs every 2 s (1 s would do; 2 s keeps the CPU
free), CanaryFailing's ``for:`` and ``keep_firing_for`` are cut to 2 s, scrapes and evaluations run every
second, Alertmanager's group timings are a second, and PagerDuty's events URL is the webhook sink's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from app.canary import CANARY_USER
from tests.fakes.webhook_sink import Notification, WebhookSink
from tests.stack import Process, check_ledger_invariants, free_port, running_stack
from tests.support.monitoring import (
    PrometheusAPI,
    panel_targets,
    project_config,
    prometheus_config,
    ready,
    start_alertmanager,
    start_prometheus,
    substitute,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
CANARY_RULES = ROOT / "alerts" / "rules" / "canary.rules.yml"
SHORT = "2s"


def canary_rules_for_test(out_dir: Path) -> Path:
    document = yaml.safe_load(CANARY_RULES.read_text(encoding="utf-8"))
    [rule] = [r for group in document["groups"] for r in group["rules"] if r.get("alert") == "CanaryFailing"]
    rule["for"], rule["keep_firing_for"] = SHORT, SHORT
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CANARY_RULES.name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def pages(sink: WebhookSink, action: str) -> list[Notification]:
    """PagerDuty Events v2 events of ``action`` (trigger, resolve) about CanaryFailing."""
    return [n for n in sink.notifications() if n.path == "/pager" and isinstance(n.body, dict)
            and n.body.get("event_action") == action and "CanaryFailing" in json.dumps(n.body)]


def test_canary_failing_pages_with_no_user_traffic_and_resolves(template_db: str, tmp_path: Path) -> None:
    with running_stack(template_db, tmp_path / "stack", workers=1, POSEGEN_FAULTS="FLUX_API_ERROR=1.0") as stack, \
            WebhookSink() as sink:
        started: list[Any] = []
        try:
            exporter_port, canary_port, prometheus_port, alertmanager_port = (free_port() for _ in range(4))
            exporter = Process(["exporter", "--port", str(exporter_port)], stack.env, tmp_path / "exporter.log")
            started.append(exporter)
            alertmanager = start_alertmanager(tmp_path, project_config(sink, tmp_path / "secrets"), alertmanager_port)
            started.append(alertmanager)
            config = prometheus_config(
                {
                    "posegen-api": [f"127.0.0.1:{stack.port}"],
                    "posegen-worker": [f"127.0.0.1:{worker.metrics_port}" for worker in stack.workers],
                    "posegen-exporter": [f"127.0.0.1:{exporter_port}"],
                    "posegen-canary": [f"127.0.0.1:{canary_port}"],
                    "prometheus": [f"127.0.0.1:{prometheus_port}"],
                },
                [canary_rules_for_test(tmp_path / "rules")],
                f"127.0.0.1:{alertmanager_port}",
            )
            prometheus = start_prometheus(tmp_path, config, prometheus_port)
            started.append(prometheus)
            prom = PrometheusAPI(f"http://127.0.0.1:{prometheus_port}")

            def diagnostics() -> str:
                parts = [stack.logs()]
                for name, daemon in (("canary", canary), ("prometheus", prometheus), ("alertmanager", alertmanager)):
                    parts.append(f"--- {name} (tail) ---\n{daemon.output()[-3000:]}")
                parts.append(f"--- sink ---\n{[(n.path, n.body) for n in sink.notifications()]}")
                return "\n".join(parts)

            wait_until("Alertmanager ready", lambda: ready(f"http://127.0.0.1:{alertmanager_port}/-/ready"), 30,
                       alertmanager.output)
            wait_until("Prometheus ready", lambda: ready(f"http://127.0.0.1:{prometheus_port}/-/ready"), 30,
                       prometheus.output)
            canary_started = time.monotonic()
            canary = Process(["canary", "--metrics-port", str(canary_port)],
                             {**stack.env, "POSEGEN_API_URL": stack.base_url, "POSEGEN_CANARY_INTERVAL_SECONDS": "2",
                              "POSEGEN_CANARY_TIMEOUT_SECONDS": "30"}, tmp_path / "canary.log")
            started.append(canary)

            # The page: PagerDuty's trigger event, naming the reason.
            wait_until("CanaryFailing paged", lambda: pages(sink, "trigger"), 120, diagnostics)
            paged_after = time.monotonic() - canary_started
            [page] = pages(sink, "trigger")[:1]
            assert page.body["routing_key"] == "test-routing-key"
            assert "runs_failing" in page.body["payload"]["summary"], page.body
            # No user traffic: every generation there is is the canary's, and the exporter counted its failures
            # (pose_generations_total: they are real signals, see docs/observability.md).
            with stack.db() as conn:
                users = {row[0] for row in conn.execute("SELECT DISTINCT user_id FROM generations")}
            assert users == {CANARY_USER}
            failed = prom.query('sum(pose_generations_total{job="posegen-exporter", status="failed"})')
            assert failed and float(failed[0]["value"][1]) >= 2, failed
            reasons = {e["metadata"]["reason"] for e in map(json.loads, filter(lambda line: line.startswith("{"),
                                                                                canary.output().splitlines()))
                       if e["message"] == "Canary run failed"}
            assert reasons == {"generation_failed"}, reasons

            # The provider recovers: a worker without faults replaces the failing one; the page resolves.
            stack.workers[0].stop()
            stack.start_worker(POSEGEN_FAULTS="")
            wait_until("CanaryFailing resolved", lambda: pages(sink, "resolve"), 120, diagnostics)
            assert not prom.query('ALERTS{alertname="CanaryFailing", alertstate="firing"}')
            # The dashboard's canary panels (tests/test_live_monitoring.py runs no canary) show its runs.
            canary_targets = [(title, expr) for _, title, expr in panel_targets() if title.startswith("Canary")]
            assert len(canary_targets) >= 3, canary_targets
            for title, expr in canary_targets:
                assert prom.query(substitute(expr)), f"{title}: {expr} has no data"
            with stack.db() as conn:
                check_ledger_invariants(conn)
            print(f"CanaryFailing paged {paged_after:.1f} s after the canary started (interval 2 s, for 2 s)")
        finally:
            for process in reversed(started):
                process.stop()
            if "prom" in locals():
                prom.close()

