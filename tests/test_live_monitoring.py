"""Live proof: the project's monitoring works end to end against a real, partly failing system.

One module-wide scenario: an API, a worker and the exporter (``posegen exporter``) on their own
database and Redis db, with ``POSEGEN_FAULTS`` failing 60 % of all poses (so about a third of
the two-pose generations fail entirely); a real Prometheus scraping them every second with the
project's scrape jobs (``deploy/prometheus.yml``) and rules (``alerts/rules/*.yml``); a real
Alertmanager routing with the project's route tree (``alerts/alertmanager.yml``)
to a webhook sink. Generations go through the API; the tests then read what on-call would see:
every dashboard panel query, the HighFailureRate alert in Prometheus, and the page it delivers.

Test-only changes, made to copies in tmp_path, never to the project's files:
- ``for:`` of HighFailureRate (5m), SuccessRateDegraded (10m) and WorkerDowntime (2m) is cut to
  ``SHORT_FOR``, so the pending -> firing transition happens within the test; every other alert keeps
  its own ``for:``.
- Alertmanager receivers post to the webhook sink (``/<receiver name>``) instead of PagerDuty and
  Slack (tests/test_notifications.py runs the real receivers), group_wait/group_interval are cut to one
  second and the Watchdog's repeat_interval to two. Routes are untouched.
- Scrape targets are the local processes instead of the compose services; scrape and evaluation
  run every second.
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from alerts import suppression
from app import __version__
from app.errors import ErrorType
from tests.fakes.webhook_sink import Notification, WebhookSink
from tests.stack import Process, Stack, free_port, running_stack
from tests.support.monitoring import (
    ALERTMANAGER_CONFIG,
    DASHBOARD_BUILD,
    RULE_FILES,
    Daemon,
    PrometheusAPI,
    alertmanager_config,
    panel_targets,
    prometheus_config,
    ready,
    start_alertmanager,
    start_prometheus,
    substitute,
    wait_until,
)

pytestmark = pytest.mark.tools

# The canary's job and rules have a live test of their own (tests/test_canary_alert.py): its generations would
# add to the counts this scenario compares with the API's outcomes.
LIVE_RULE_FILES = [path for path in RULE_FILES if path.name != "canary.rules.yml"]

# Which poses fail follows from the (random) generation ids: at 0.6 a generation fails with p = 0.36, so
# 60 generations fall short of MIN_FAILED_SHARE less than once in 10,000 runs (at 0.5, once in 50).
FAULTS = {ErrorType.FLUX_API_ERROR: 0.6}
POSE_PAIRS = [
    ["pose_tree_pose", "pose_arms_crossed"],
    ["pose_waving_hello", "pose_runway_walk"],
    ["pose_standing_confident", "pose_jazz_hands"],
    ["pose_deep_squat", "pose_seated_upright"],
]
USERS = 4
FIRST_ROUND = 20
NEXT_ROUND = 10
MAX_GENERATIONS = 60
# The share of failed generations the scenario needs before asking for HighFailureRate (> 10%): well
# above the threshold, so extrapolation in rate() cannot tip it under.
MIN_FAILED_SHARE = 0.15
MIN_FAILED = 4

SHORT_FOR = "5s"
SHORTENED_ALERTS = {"HighFailureRate", "SuccessRateDegraded", "WorkerDowntime"}
FIRING_ALERT = "HighFailureRate"
INHIBITED_ALERT = "SuccessRateDegraded"


# Panel queries allowed to return no data at the end of this scenario, keyed by (dashboard file, panel
# title [refId]), each with its reason: only the canary's, whose own live test runs them (the API 5xx ratio used
# to be empty while no request had failed; its query now counts a missing 5xx series as 0).
ALLOWED_EMPTY: dict[tuple[str, str], str] = {
    ("pose-generator-overview.json", title): "no canary runs here: tests/test_canary_alert.py runs these queries"
    for title in ("Canary Runs [A]", "Canary Runs [B]", "Canary: Time Since Last Success [A]")
}


@dataclass
class Live:
    """The running scenario, as the tests read it."""

    stack: Stack
    exporter: Process
    prometheus: Daemon
    alertmanager: Daemon
    prom: PrometheusAPI
    alertmanager_url: str
    sink: WebhookSink
    rules: list[dict[str, Any]]
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)

    def statuses(self) -> dict[str, int]:
        counts = {"completed": 0, "failed": 0}
        for body in self.finished.values():
            counts[body["status"]] += 1
        return counts

    def wait_scraped(self) -> None:
        """Wait until Prometheus holds the exporter's counts of every generation the API saw finish."""
        expected = self.statuses()

        def counted() -> bool:
            query = 'sum by (status) (pose_generations_total{status=~"completed|failed"})'
            got = {series["metric"]["status"]: int(float(series["value"][1])) for series in self.prom.query(query)}
            return got == expected

        wait_until(f"Prometheus pose_generations_total equal to the API's outcomes {expected}", counted, 30,
                   self.diagnostics)

    def diagnostics(self) -> str:
        parts = [self.stack.logs()]
        for name, process in (("exporter", self.exporter), ("prometheus", self.prometheus),
                              ("alertmanager", self.alertmanager)):
            parts.append(f"--- {name} (tail) ---\n{process.output()[-3000:]}")
        return "\n".join(parts)


# --- configuration under test, derived from the project's files ---------------------------------


def rules_for_test(out_dir: Path) -> tuple[list[Path], list[dict[str, Any]]]:
    """Copies of the project's rule files with ``for:`` of SHORTENED_ALERTS cut to SHORT_FOR; and every rule."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, rules, shortened = [], [], set()
    for source in LIVE_RULE_FILES:
        document = yaml.safe_load(source.read_text(encoding="utf-8"))
        for group in document["groups"]:
            for rule in group["rules"]:
                rules.append(copy.deepcopy(rule))
                if rule.get("alert") in SHORTENED_ALERTS:
                    rule["for"] = SHORT_FOR
                    shortened.add(rule["alert"])
        path = out_dir / source.name
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        paths.append(path)
    assert shortened == SHORTENED_ALERTS, f"alerts missing from {LIVE_RULE_FILES}: {SHORTENED_ALERTS - shortened}"
    return paths, rules


def routed_receiver(labels: dict[str, str]) -> str:
    """The receiver the project's alertmanager.yml picks for ``labels``, as amtool (Alertmanager's router) says."""
    argv = ["amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
            *(f"{name}={value}" for name, value in sorted(labels.items()))]
    answer = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert answer.returncode == 0, answer
    return answer.stdout.strip()


def rule(rules: list[dict[str, Any]], **match: str) -> dict[str, Any]:
    return next(r for r in rules if all(r.get(key) == value for key, value in match.items()))


# --- the scenario -------------------------------------------------------------------------------


def drive_generations(live: Live) -> None:
    """Generations of two poses across a few users until enough of them failed to breach HighFailureRate."""
    stack = live.stack
    users = [stack.new_user(credits=100_000) for _ in range(USERS)]
    owner: dict[str, str] = {}
    submitted = 0
    while True:
        batch = FIRST_ROUND if submitted == 0 else NEXT_ROUND
        for index in range(submitted, submitted + batch):
            user = users[index % USERS]
            answer = stack.create_generation(user, POSE_PAIRS[index % len(POSE_PAIRS)], prompt=f"live proof {index}")
            assert answer.status_code == 202, answer.text
            owner[answer.json()["generationId"]] = user
        submitted += batch
        for generation_id, user in owner.items():
            if generation_id not in live.finished:
                live.finished[generation_id] = stack.wait_finished(user, generation_id, timeout=90)
        counts = live.statuses()
        if counts["failed"] >= MIN_FAILED and counts["failed"] / submitted >= MIN_FAILED_SHARE:
            return
        assert submitted < MAX_GENERATIONS, f"faults failed too few generations: {counts} of {submitted}"


@pytest.fixture(scope="module")
def live(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live")
    faults = ",".join(f"{error_type.value}={share}" for error_type, share in FAULTS.items())
    with running_stack(template_db, tmp / "stack", workers=1, POSEGEN_FAULTS=faults) as stack, WebhookSink() as sink:
        started: list[Any] = []
        try:
            exporter_port, prometheus_port, alertmanager_port = free_port(), free_port(), free_port()
            exporter = Process(["exporter", "--port", str(exporter_port)], stack.env, tmp / "exporter.log")
            started.append(exporter)
            alertmanager = start_alertmanager(tmp, alertmanager_config(sink), alertmanager_port)
            started.append(alertmanager)
            rule_files, rules = rules_for_test(tmp / "rules")
            config = prometheus_config(
                {
                    "posegen-api": [f"127.0.0.1:{stack.port}"],
                    "posegen-worker": [f"127.0.0.1:{worker.metrics_port}" for worker in stack.workers],
                    "posegen-exporter": [f"127.0.0.1:{exporter_port}"],
                    "prometheus": [f"127.0.0.1:{prometheus_port}"],
                },
                rule_files,
                f"127.0.0.1:{alertmanager_port}",
            )
            prometheus = start_prometheus(tmp, config, prometheus_port)
            started.append(prometheus)
            prom = PrometheusAPI(f"http://127.0.0.1:{prometheus_port}")
            started.append(prom)
            scenario = Live(stack, exporter, prometheus, alertmanager, prom, f"http://127.0.0.1:{alertmanager_port}",
                            sink, rules)

            wait_until("Alertmanager ready", lambda: ready(f"{scenario.alertmanager_url}/-/ready"), 30,
                       scenario.diagnostics)
            wait_until("Prometheus ready", lambda: ready(f"http://127.0.0.1:{prometheus_port}/-/ready"), 30,
                       scenario.diagnostics)
            # Every target scraped before any generation: the counters' baselines are then in the TSDB and
            # rate() sees every increase of the scenario.
            jobs = {job["job_name"] for job in config["scrape_configs"]}
            wait_until(
                f"every scrape job up ({sorted(jobs)})",
                lambda: {t["labels"]["job"] for t in prom.targets() if t["health"] == "up"} >= jobs
                and len(prom.query("pose_generations_total")) > 0,
                60, scenario.diagnostics,
            )
            drive_generations(scenario)
            yield scenario
        finally:
            for process in reversed(started):
                if isinstance(process, PrometheusAPI):
                    process.close()
                else:
                    process.stop()


# --- what on-call sees --------------------------------------------------------------------------


def test_prometheus_counts_every_finished_generation(live: Live) -> None:
    """The exporter's counters, scraped by Prometheus, agree with what the API answered per generation."""
    expected = live.statuses()
    assert expected["completed"] > 0 and expected["failed"] > 0, expected
    live.wait_scraped()
    poses = sum(len(body["poses"]) for body in live.finished.values())
    failed_poses = sum(pose["status"] == "failed" for body in live.finished.values() for pose in body["poses"])
    errors = {series["metric"]["error_type"]: int(float(series["value"][1]))
              for series in live.prom.query("sum by (error_type) (pose_errors_total) > 0")}
    assert errors == {ErrorType.FLUX_API_ERROR.value: failed_poses}, (errors, failed_poses, poses)


def test_every_dashboard_panel_shows_data(live: Live) -> None:
    """Each query of each built dashboard returns data from the live Prometheus (the allow-list says why not)."""
    targets = panel_targets()
    assert targets, f"no panel queries in {DASHBOARD_BUILD}"
    live.wait_scraped()

    def without_data() -> list[str]:
        return [f"{dashboard} / {title}: {query}" for dashboard, title, expr in targets
                if (dashboard, title) not in ALLOWED_EMPTY and not live.prom.query(query := substitute(expr))]

    # A rate() needs two scrapes of a series; targets are scraped independently, so give each a few.
    deadline = time.monotonic() + 20
    while (empty := without_data()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not empty, "panel queries without data:\n" + "\n".join(empty)


def test_high_failure_rate_fires_in_prometheus(live: Live) -> None:
    """The recorded failure ratio matches the real share, is past the threshold, and HighFailureRate fires."""
    alert = rule(live.rules, alert=FIRING_ALERT)
    recorded = rule(live.rules, record="posegen:generation_failure_ratio:rate1h")
    counts = live.statuses()
    share = counts["failed"] / (counts["failed"] + counts["completed"])
    live.wait_scraped()

    def ratio() -> float | None:
        # The rule is evaluated every second; an evaluation from before the last scrape lags the truth,
        # so wait for one that has seen every finished generation.
        series = live.prom.query(recorded["record"])
        if not series:
            return None
        value = float(series[0]["value"][1])
        return value if abs(value - share) < 0.05 else None

    wait_until(f"{recorded['record']} recorded within 0.05 of {share:.3f}", ratio, 45, live.diagnostics)
    # The alert also reads the volume guards, recorded by another rule group whose last evaluation may come
    # from before the last scrape: wait for an evaluation that has seen it, as for the ratio.
    wait_until(f"{FIRING_ALERT} expression true: {alert['expr']}", lambda: live.prom.query(alert["expr"]), 45,
               live.diagnostics)
    assert live.prom.query(recorded["expr"]), recorded["expr"]

    def firing() -> list[dict[str, Any]]:
        return [a for a in live.prom.alerts() if a["labels"]["alertname"] == FIRING_ALERT and a["state"] == "firing"]

    found = wait_until(f"{FIRING_ALERT} firing in Prometheus", firing, 60, live.diagnostics)
    assert found[0]["labels"]["severity"] == alert["labels"]["severity"] == "critical"
    assert found[0]["labels"]["area"] == alert["labels"]["area"]


def test_alertmanager_pages_the_critical_receiver(live: Live) -> None:
    """The real Alertmanager delivers HighFailureRate through the receiver the project routes it to."""
    labels = {"alertname": FIRING_ALERT, **rule(live.rules, alert=FIRING_ALERT)["labels"]}
    receiver = routed_receiver(labels)
    assert receiver == "pager", f"alerts/alertmanager.yml routes {labels} to {receiver!r}, not the pager"

    def paged(notification: Notification) -> bool:
        return notification.receiver == receiver and any(
            alert["labels"].get("alertname") == FIRING_ALERT for alert in notification.alerts("firing"))

    found = live.sink.wait_for(lambda notifications: any(paged(n) for n in notifications), timeout=90)
    page = next(n for n in found if paged(n))
    assert page.path == f"/{receiver}"
    assert page.body["status"] == "firing"
    assert page.body["groupLabels"] == {"alertname": FIRING_ALERT, "area": labels["area"]}
    alert = next(a for a in page.alerts("firing") if a["labels"]["alertname"] == FIRING_ALERT)
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["runbook_url"].startswith("https://")
    assert alert["annotations"]["runbook_url"].endswith(f"/alerts/runbooks/{FIRING_ALERT}.md")
    # Rendered by Prometheus: the panel around the evaluation, and the hour's top error type.
    assert "viewPanel=" in alert["annotations"]["dashboard_url"] and "{{" not in alert["annotations"]["dashboard_url"]
    assert alert["annotations"]["top_error_type"].startswith(f"{ErrorType.FLUX_API_ERROR.value} (")
    assert alert["annotations"]["summary"]


def test_a_critical_holds_back_the_warning_of_its_area(live: Live) -> None:
    """SuccessRateDegraded (warning, same area) sees the same failures; its rule holds it back while
    HighFailureRate fires (alerts/suppression.py) unless it was pending before HighFailureRate (then it fired
    first, rightly). Nothing is inhibited in Alertmanager, whose resolves would be lost."""
    wait_until(f"{FIRING_ALERT} firing", lambda: any(
        a["labels"]["alertname"] == FIRING_ALERT and a["state"] == "firing" for a in live.prom.alerts()), 90,
        live.diagnostics)
    critical = next(a for a in live.prom.alerts() if a["labels"]["alertname"] == FIRING_ALERT)
    wait_until("the warning's own condition visible", lambda: live.prom.query(
        suppression.original(rule(live.rules, alert=INHIBITED_ALERT)["expr"])), 60, live.diagnostics)
    warnings = [a for a in live.prom.alerts() if a["labels"]["alertname"] == INHIBITED_ALERT]
    def at(alert: dict[str, Any]) -> float:
        whole, _, fraction = alert["activeAt"].rstrip("Z").partition(".")
        return datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6]:0<6}+00:00").timestamp()

    for warning in warnings:
        assert at(warning) < at(critical), (warning, critical)
    answer = httpx.get(f"{live.alertmanager_url}/api/v2/alerts", timeout=10)
    answer.raise_for_status()
    assert not [a for a in answer.json() if a["status"]["inhibitedBy"]]


def test_deploy_annotation_marks_each_job_starting_its_release(live: Live) -> None:
    """The dashboard's deploy annotation query finds every scraped job's (version, revision) as it appeared."""
    dashboard = json.loads((DASHBOARD_BUILD / "pose-generator-overview.json").read_text(encoding="utf-8"))
    (annotation,) = [a for a in dashboard["annotations"]["list"] if a["name"] == "Deploys"]
    now = time.time()
    answer = live.prom.http.get("/api/v1/query_range", params={
        "query": substitute(annotation["expr"]), "start": now - 600, "end": now, "step": "5"})
    answer.raise_for_status()
    marked = {(series["metric"]["job"], series["metric"]["version"]) for series in answer.json()["data"]["result"]}
    assert {("posegen-api", __version__), ("posegen-worker", __version__),
            ("posegen-exporter", __version__)} <= marked, marked


def test_slo_rules_measure_the_generations(live: Live) -> None:
    """The generated SLO rules record the real failed share, and a third of generations failing spends the budget."""
    counts = live.statuses()
    share = counts["failed"] / (counts["failed"] + counts["completed"])
    live.wait_scraped()
    selector = '{slo="generation-success"}'

    def recorded() -> float | None:
        series = live.prom.query(f"posegen_slo:sli_error:ratio_rate30d{selector}")
        value = float(series[0]["value"][1]) if series else None
        return value if value is not None and abs(value - share) < 0.05 else None

    wait_until(f"SLO error ratio within 0.05 of {share:.3f}", recorded, 45, live.diagnostics)
    budget = float(live.prom.query(f"posegen_slo:error_budget_remaining:ratio{selector}")[0]["value"][1])
    assert budget < 0, f"{share:.0%} failed against a 5% budget must overspend it (remaining {budget})"


def test_watchdog_reaches_the_dead_mans_switch_again_and_again(live: Live) -> None:
    """Prometheus fires Watchdog, Alertmanager routes it to the dead-man's-switch receiver and repeats it."""
    assert routed_receiver({"alertname": "Watchdog", **rule(live.rules, alert="Watchdog")["labels"]}) == "deadman"

    def pings(notifications: list[Notification]) -> list[Notification]:
        return [n for n in notifications if n.receiver == "deadman"
                and any(a["labels"].get("alertname") == "Watchdog" for a in n.alerts("firing"))]

    found = pings(live.sink.wait_for(lambda notifications: len(pings(notifications)) >= 3, timeout=60))
    assert found[-1].received_at - found[0].received_at > 1.0, "repeated over time, not one burst"
    assert not any(n.receiver != "deadman" and any(a["labels"].get("alertname") == "Watchdog" for a in n.alerts())
                   for n in live.sink.notifications())


# Last: it kills the scenario's workers.
def test_killing_every_worker_empties_pose_workers_and_pages(live: Live) -> None:
    """SIGKILL of every worker (and work-horse): pose_workers is 0 in Prometheus within 90 s, and the real
    Alertmanager delivers the WorkerDowntime page within 5 minutes (its ``for:`` cut to SHORT_FOR here)."""
    assert live.prom.query("sum(pose_workers) > 0"), "the scenario's worker should be counted before the kill"
    killed_at = time.monotonic()
    killed_wall = time.time()
    for worker in live.stack.workers:
        worker.kill(signal.SIGKILL)
    wait_until("sum(pose_workers) == 0 in Prometheus", lambda: live.prom.query("sum(pose_workers) == 0"),
               90 - (time.monotonic() - killed_at), live.diagnostics)
    gone_after = time.monotonic() - killed_at

    def paged(notification: Notification) -> bool:
        return notification.receiver == "pager" and any(
            alert["labels"].get("alertname") == "WorkerDowntime"
            and datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00")).timestamp() >= killed_wall - 1
            for alert in notification.alerts("firing"))

    found = live.sink.wait_for(lambda notifications: any(paged(n) for n in notifications),
                               timeout=300 - (time.monotonic() - killed_at))
    page = next(n for n in found if paged(n))
    assert page.received_at - killed_wall < 300
    print(f"pose_workers 0 after {gone_after:.0f} s; page after {page.received_at - killed_wall:.0f} s")
