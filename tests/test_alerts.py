"""Alert rules, their promtool unit tests and the Alertmanager routing, checked with the real tools.

promtool and amtool come from the Debian packages ``prometheus`` and ``prometheus-alertmanager``;
without them these tests fail (CI installs them with ``make tools``), they never skip.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from alerts import links, platform, suppression
from tests.support.alerts import (
    ALERTMANAGER,
    ALERTS,
    PROMQL_KEYWORDS,
    ROOT,
    RULE_FILES,
    load_alerts,
    load_rules,
    require_tool,
    routes,
    run,
)

pytestmark = pytest.mark.tools

PLATFORM = platform.load()
WAITING = 'pose_queue_jobs{state="waiting"}'

RULES = ALERTS / "rules" / "pose-generator.rules.yml"
RULE_TESTS = sorted((ALERTS / "tests").glob("*.yml"))
RUNBOOKS = ALERTS / "runbooks"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"

RECEIVER_BY_SEVERITY = {"critical": "pager", "warning": "chat", "none": "deadman"}
# Alerts that fire by design whatever the input: no "quiet" or "idle" case exists for them.
ALWAYS_FIRING = {"Watchdog"}
AREAS = {"generation", "performance", "queue", "credits", "workers", "availability", "monitoring", "canary"}


def test_rule_file_is_valid() -> None:
    result = run(require_tool("promtool", "prometheus"), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


HAND_WRITTEN_TESTS = [path for path in RULE_TESTS if not path.name.startswith("slo")]


@pytest.mark.parametrize("path", HAND_WRITTEN_TESTS, ids=lambda path: path.name)
def test_rule_unit_tests_pass(path: Path) -> None:
    """The hand-written tests, a file at a time; tests/test_slo.py runs the ones `posegen slo build` generates."""
    result = run(require_tool("promtool", "prometheus"), "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_labelled_annotated_and_has_a_runbook() -> None:
    alerts = load_alerts()
    assert alerts
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in RECEIVER_BY_SEVERITY, name
        assert alert["labels"]["area"] in AREAS, name
        annotations = alert["annotations"]
        assert annotations["summary"].strip(), name
        assert "$value" in annotations["description"], f"{name}: the description must show the value"
        assert annotations["runbook_url"] == links.runbook_url(name), name
        assert annotations["dashboard_url"].startswith(f"{links.DEFAULT_GRAFANA_URL}/d/posegen-"), name
        assert (RUNBOOKS / f"{name}.md").is_file(), f"missing runbook for {name}"
    assert {path.stem for path in RUNBOOKS.glob("*.md")} == {alert["alert"] for alert in alerts}
    assert {alert["alert"] for alert in alerts} >= {"GenerationSuccessBudgetBurn", "PoseLatencyBudgetBurn"}


def test_seed_alerts_keep_their_conditions_and_severities() -> None:
    alerts = {alert["alert"]: alert for alert in load_alerts()}
    expected = {
        "HighFailureRate": ("critical", "posegen:generation_failure_ratio:rate1h > 0.10"),
        "QueueBacklog": ("warning", f'max {PLATFORM.by()} ({PLATFORM.select("exporter", WAITING)}) > 500'),
        "SlowGeneration": ("warning", "posegen:generation_duration_seconds:avg15m > 60"),
        "CreditRefundSpike": ("critical", "posegen:credits_refunded:increase1h > 1000"),
        "WorkerDowntime": ("critical", "> 600"),
    }
    for name, (severity, condition) in expected.items():
        assert alerts[name]["labels"]["severity"] == severity, name
        assert condition in alerts[name]["expr"], name


def test_every_alert_has_a_firing_a_just_below_and_an_idle_test_case() -> None:
    """Test groups are named "fires: ...", "quiet: ..." and, for no traffic at all, "quiet: idle ..."."""
    fires: set[str] = set()
    below: set[str] = set()
    idle: set[str] = set()
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            name = group["name"]
            for case in group.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    fires.add(case["alertname"])
                elif "idle" in name:
                    idle.add(case["alertname"])
                elif name.startswith("quiet"):
                    below.add(case["alertname"])
    alerts = {alert["alert"] for alert in load_alerts()}
    assert alerts - fires == set(), "alerts without a test where they fire"
    alerts -= ALWAYS_FIRING
    assert alerts - below == set(), "alerts without a test just below their threshold"
    assert alerts - idle == set(), "alerts without an idle (no traffic) test"


def reads_an_instant_series(expr: str) -> bool:
    """Whether ``expr`` selects a scraped (not recorded) series without a range: one missed scrape (a
    staleness marker) empties that selection for an evaluation."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*(\[)?", text):
        name, _, ranged = match.groups()
        if text[match.end(1):].lstrip().startswith("(") or name in PROMQL_KEYWORDS or ":" in name:
            continue  # a function, a keyword, a recording rule (level:metric:operations, fed by ranges)
        if re.fullmatch(r"\d.*|Inf|NaN", name) or ranged:
            continue
        return True
    return False


def instant_value_alerts() -> list[dict]:
    """Alerts whose own expression reads an instant series (the ALERTS their suppression reads aside)."""
    return [alert for alert in load_alerts()
            if alert["alert"] not in ALWAYS_FIRING and reads_an_instant_series(suppression.original(alert["expr"]))]


def test_alerts_over_instant_values_keep_firing_through_a_missed_scrape() -> None:
    """keep_firing_for on each, and a promtool case named "stale: <Alert> ..." proving it fires through a
    stale sample (alerts/tests/stale.test.yml, monitoring.test.yml)."""
    alerts = instant_value_alerts()
    assert {"QueueOverloaded", "WorkerDowntime", "ExporterSourceDown"} <= {a["alert"] for a in alerts}
    assert "HighFailureRate" not in {a["alert"] for a in alerts}  # a ratio of rates: a stale sample leaves it
    stale_cases: set[str] = set()
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            if group["name"].startswith("stale:"):
                cases = group.get("alert_rule_test", [])
                stale_cases |= {case["alertname"] for case in cases if case.get("exp_alerts")}
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("keep_firing_for"), f"{name}: one missed scrape would resolve it; add keep_firing_for"
        assert name in stale_cases, f"{name}: no promtool 'stale:' case"


def test_ratios_divide_only_by_positive_denominators() -> None:
    """An idle system has zero rates; a bare division would give NaN and could fire."""
    for rule in load_rules():
        expr = re.sub(r'"[^"]*"', '""', rule["expr"])  # a "/" inside a label matcher is no division
        if "/" in expr:
            name = rule.get("record") or rule.get("alert")
            guarded = re.search(r"/\s*\(.*>\s*0\s*\)", expr, re.S)
            assert guarded, f"{name}: guard the denominator with (... > 0)"


def test_alertmanager_config_is_valid() -> None:
    result = run(require_tool("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (("severity=critical", "area=queue"), "pager"),
        (("severity=critical", "area=workers"), "pager"),
        (("severity=warning", "area=queue"), "chat"),
        (("severity=warning", "area=credits"), "chat"),
        (("area=queue",), "chat"),
    ],
)
def test_routes_send_critical_to_the_pager_and_warnings_to_chat(
    labels: tuple[str, ...], receiver: str
) -> None:
    result = routes(*labels, verify=receiver)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


def test_routes_verification_rejects_a_wrong_receiver() -> None:
    assert routes("severity=critical", "area=queue", verify="chat").returncode != 0
    assert routes("severity=warning", "area=queue", verify="pager").returncode != 0


def test_every_alert_reaches_the_receiver_of_its_severity() -> None:
    for alert in load_alerts():
        labels = alert["labels"]
        receiver = RECEIVER_BY_SEVERITY[labels["severity"]]
        result = routes(
            f"alertname={alert['alert']}",
            *(f"{key}={value}" for key, value in labels.items()),
            verify=receiver,
        )
        assert result.returncode == 0, f"{alert['alert']}: {result.stdout}{result.stderr}"


def test_symptoms_are_held_back_in_their_rules_not_inhibited() -> None:
    """Each alert's expression holds it back while its causes fire, unless it already fires
    (alerts/suppression.py; tests/test_page_lifecycle.py runs it live). No inhibit rule: it mutes resolves."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    # Grouped per environment too (alerts/platform.yml's group_labels): one environment's outage, one notification.
    assert config["route"]["group_by"] == ["alertname", "area", *PLATFORM.group_labels]
    assert not config.get("inhibit_rules")
    dependency = 'ALERTS{alertstate="firing", alertname="ExporterSourceDown"}'
    for alert in load_alerts():
        name, labels, expr = alert["alert"], alert["labels"], alert["expr"]
        area = labels["area"]
        expected = []
        if labels["severity"] == "warning":
            expected.append(f'ALERTS{{alertstate="firing", severity="critical", area="{area}"}}')
        if labels["severity"] == "critical" and "slo" in labels:
            expected.append(f'ALERTS{{alertstate="firing", severity="critical", area="{area}", slo=""}}')
        if name not in {"ExporterSourceDown", "ExporterTargetDown", "ApiTargetDown", "ScrapeJobAbsent", "Watchdog"}:
            expected.append(dependency)
        for cause in expected:
            assert cause in expr, (name, cause)
        if expected:
            assert f'unless {PLATFORM.on()} ALERTS{{alertstate="firing", alertname="{name}", ' in expr, name
        else:
            assert "ALERTS" not in expr, name


def test_receivers_read_their_destinations_from_files() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    pager = receivers["pager"]["pagerduty_configs"][0]
    chat = receivers["chat"]["slack_configs"][0]
    deadman = receivers["deadman"]["slack_configs"][0]
    assert pager["routing_key_file"] == "/etc/posegen/alertmanager/pager_routing_key"
    assert chat["api_url_file"] == "/etc/posegen/alertmanager/chat_url"
    assert deadman["api_url_file"] == "/etc/posegen/alertmanager/deadman_url"


def test_watchdog_goes_to_the_dead_mans_switch_and_repeats_often() -> None:
    result = routes("alertname=Watchdog", "severity=none", "area=monitoring", verify="deadman")
    assert result.returncode == 0, result.stdout + result.stderr
    route = next(r for r in yaml.safe_load(ALERTMANAGER.read_text())["route"]["routes"]
                 if r["receiver"] == "deadman")
    assert route["repeat_interval"] == "5m"


def test_deploy_prometheus_config_is_valid_and_scrapes_the_jobs_the_rules_select() -> None:
    result = run(require_tool("promtool", "prometheus"), "check", "config", str(PROMETHEUS))
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    selected = {job for path in RULE_FILES for job in re.findall(r'job="([^"]+)"', path.read_text())}
    assert selected <= jobs
    assert {"posegen-api", "posegen-worker", "posegen-exporter"} <= jobs


# Alerts on a ratio or an average, each with its low-traffic guard (`and on () <volume> >= N`).
GUARDED = {
    "HighFailureRate", "SuccessRateDegraded", "RefundRateHigh", "RefundRateCritical", "ApiServerErrors",
    "SlowGeneration", "PoseTimeHigh", "PoseTimeCritical",
}
GUARD_SCENARIOS = {
    "[quiet hour]": False,
    "[low-traffic outage]": True,
    "[busy healthy]": False,
    "[busy past the threshold]": True,
}


def _alerting_section() -> str:
    """The Alerting section of docs/observability.md (up to its next second-level heading)."""
    text = (ROOT / "docs" / "observability.md").read_text()
    return text.split("\n## Alerting\n", 1)[1].split("\n## ", 1)[0]


def test_every_ratio_alert_has_a_low_traffic_guard_stated_in_its_description_and_runbook() -> None:
    alerts = {alert["alert"]: alert for alert in load_alerts()}
    ratio_reading = {name for name, alert in alerts.items() if re.search(r"_ratio:|:avg", alert["expr"])}
    assert ratio_reading == GUARDED, "an alert reads a ratio or an average: give it a guard and list it"
    for name in GUARDED:
        expr = alerts[name]["expr"]
        # Counted per environment: `and on (cluster, namespace) <volume> >= N`.
        guard = rf"and {re.escape(PLATFORM.on())} posegen:\w+:increase\w+ >= \d+"
        assert re.search(guard, expr), f"{name}: no volume guard per environment"
        assert "Guard:" in alerts[name]["annotations"]["description"], f"{name}: the description must state it"
        assert "Low-traffic guard" in (RUNBOOKS / f"{name}.md").read_text(), f"{name}: the runbook must state it"
        assert f"`{name}`" in _alerting_section(), f"{name}: docs/observability.md's Alerting section must state it"


def test_every_guarded_alert_has_the_four_traffic_scenarios() -> None:
    """Quiet-hour blip (quiet), low-traffic outage (fires), busy healthy (quiet), busy at the level (fires).

    A warning "fires" too when it is held back by a critical of its area that fires in the same case
    (alerts/suppression.py): its guard let it through, its critical took over."""
    areas = {alert["alert"]: (alert["labels"]["severity"], alert["labels"]["area"]) for alert in load_alerts()}
    seen: dict[tuple[str, str], bool] = {}
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for tag in GUARD_SCENARIOS:
                if tag in group["name"]:
                    cases = group.get("alert_rule_test", [])
                    critical = {(case["eval_time"], areas[case["alertname"]][1]) for case in cases
                                if case["exp_alerts"] and areas[case["alertname"]][0] == "critical"}
                    for case in cases:
                        severity, area = areas[case["alertname"]]
                        held = severity == "warning" and (case["eval_time"], area) in critical
                        seen[(case["alertname"], tag)] = bool(case["exp_alerts"]) or held or seen.get(
                            (case["alertname"], tag), False)
    for name in GUARDED:
        for tag, fires in GUARD_SCENARIOS.items():
            assert (name, tag) in seen, f"{name}: no {tag} scenario"
            if fires:
                assert seen[(name, tag)], f"{name}: {tag} must fire"


def test_links_are_absolute_and_current() -> None:
    """Committed rule files carry the default bases and the panel ids of the built dashboards."""
    for path in RULE_FILES:
        text = path.read_text()
        assert links.relink(text) == text, f"{path.name} links are stale: run `posegen alerts build`"
    from app.settings import Settings

    assert (Settings().runbook_base_url, Settings().grafana_url) == (links.DEFAULT_RUNBOOK_BASE,
                                                                      links.DEFAULT_GRAFANA_URL)


def test_alerts_build_writes_the_configured_bases(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "POSEGEN_RUNBOOK_BASE_URL": "https://wiki.example.org/runbooks/",
           "POSEGEN_GRAFANA_URL": "https://grafana.example.org"}
    import sys

    answer = subprocess.run([sys.executable, "-m", "app.cli", "alerts", "build", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert answer.returncode == 0, answer.stderr
    built = sorted(tmp_path.glob("*.yml"))
    assert [path.name for path in built] == [path.name for path in RULE_FILES]
    for path in built:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    annotations = rule["annotations"]
                    assert annotations["runbook_url"] == f"https://wiki.example.org/runbooks/{rule['alert']}.md"
                    assert annotations["dashboard_url"].startswith("https://grafana.example.org/d/posegen-")
    result = run(require_tool("promtool", "prometheus"), "check", "rules", *map(str, built))
    assert result.returncode == 0, result.stdout + result.stderr
    bad = subprocess.run([sys.executable, "-m", "app.cli", "alerts", "build", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**env, "POSEGEN_GRAFANA_URL": "grafana.example.org"})
    assert bad.returncode == 2 and "POSEGEN_GRAFANA_URL" in bad.stderr


def test_dashboard_links_open_the_panel_of_each_alert() -> None:
    for alert in load_alerts():
        url = alert["annotations"]["dashboard_url"]
        (dashboard_file, uid), title = links.panel_for(alert["alert"])
        assert f"/d/{uid}?orgId=1&viewPanel={links.panel_id(dashboard_file, title)}&from=" in url, alert["alert"]


def test_generation_alerts_name_the_top_error_type_of_the_hour() -> None:
    """One template for every generation alert, reading the recorded errors by type of the last hour."""
    top_error_type = platform.top_error_type(PLATFORM)
    assert 'posegen:errors:increase1h{cluster=%q,namespace=%q}' in top_error_type  # its own environment's

    rules = load_rules()
    record = next(rule for rule in rules if rule.get("record") == "posegen:errors:increase1h")
    assert record["expr"] == (f"sum {PLATFORM.by('error_type')} ({PLATFORM.dedup()} "
                              f"(increase({PLATFORM.select('exporter', 'pose_errors_total')}[1h])))")
    generation = [rule for rule in rules if "alert" in rule and rule["labels"]["area"] == "generation"]
    assert {rule["alert"] for rule in generation} >= {"HighFailureRate", "SuccessRateDegraded",
                                                      "GenerationSuccessBudgetBurn"}
    for rule in generation:
        assert rule["annotations"]["top_error_type"] == top_error_type, rule["alert"]
