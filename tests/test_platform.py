"""The platform config (alerts/platform.yml) renders every rule, SLO and route, and the shipped Prometheus
configurations keep the history those rules read.

A non-default config (other environment labels, other job selectors, an alert disabled, a threshold
overridden) is rendered through the CLI and proven with promtool: only its environment's numbers page.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alerts import build, links, platform, slo
from tests.support.alerts import ROOT, require_tool, run

RULE_FILES = sorted((ROOT / "alerts" / "rules").glob("*.yml"))


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *argv], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin"})


def test_committed_rules_and_routing_are_rendered_from_the_config() -> None:
    config = platform.load()
    for name, text in platform.render_rules(config).items():
        committed = (ROOT / "alerts" / "rules" / name).read_text()
        assert links.relink(text) == committed, f"alerts/rules/{name} is stale: run `posegen alerts build`"
    assert build.slo_files()[slo.RULES_OUT] == slo.RULES_OUT.read_text(), "run `posegen slo build`"
    text = platform.ALERTMANAGER.read_text()
    assert platform.alertmanager_config(config, text) == text, "alerts/alertmanager.yml: run `posegen alerts build`"
    route = yaml.safe_load(text)["route"]
    assert route["group_by"] == ["alertname", "area", "cluster", "namespace"]
    assert (config.runbook_base, config.grafana_url) == (links.DEFAULT_RUNBOOK_BASE, links.DEFAULT_GRAFANA_URL)


def test_every_rule_aggregates_by_the_environment_labels_and_selects_its_job() -> None:
    """No bare sum()/max() and no guard matching `on ()`: each environment is judged on its own numbers."""
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule.get("alert")
                expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', rule["expr"])
                if name == "Watchdog":
                    continue
                for match in re.finditer(r"\b(sum|max|min|avg|count|group)\s*(\(|by|without)", expr):
                    rest = expr[match.end(1):].lstrip()
                    if match.group(1) in ("sum", "group") and ("absent(" in rest[:12] or rest.startswith("(up")
                                                              or rest.startswith("(pose_")):
                        continue  # absent()'s fallback and its `unless on ()`: one Prometheus, no labels
                    assert rest.startswith(("by (cluster, namespace", "without (instance, pod)")), (name, rest[:60])
                assert "on ()" not in expr.replace("unless on () group(", ""), name
                for selector in re.findall(r"\b(pose_\w+|up)\{([^}]*)\}", expr):
                    assert 'job=""' in selector[1], f"{name}: {selector[0]} without its job's selector"


OTHER = {
    "selectors": {"api": 'job="ml-api",team="ml"', "exporter": 'job="ml-exporter",team="ml"',
                  "worker": 'job="ml-worker",team="ml"', "canary": 'job="ml-canary",team="ml"'},
    "group_labels": ["k8s_cluster", "env"],
    "replica_labels": ["instance", "kubernetes_pod_name"],
    "alerts": {"QueueBacklog": {"enabled": False}, "HighFailureRate": {"threshold": 0.2}},
    "links": {"runbook_base": "https://wiki.example.org/runbooks", "grafana_url": "https://grafana.example.org"},
}


def other_series(env: str, failed_per_minute: float, replica: str = "exporter-0", team: str = "ml",
                 job: str = "ml-exporter") -> list[dict[str, str]]:
    labels = f'job="{job}",team="{team}",k8s_cluster="eu1",env="{env}",instance="{replica}:9108",' \
             f'kubernetes_pod_name="{replica}"'
    completed = 10 - failed_per_minute
    return [
        {"series": f'pose_generations_total{{{labels},status="completed"}}', "values": f"0+{completed}x90"},
        {"series": f'pose_generations_total{{{labels},status="failed"}}', "values": f"0+{failed_per_minute}x90"},
    ]


def test_another_platform_renders_its_labels_selectors_and_overrides(tmp_path: Path) -> None:
    """Rendered through the CLI with another config, then proven with promtool: an environment failing 30%
    pages with its labels; one failing 15% does not (HighFailureRate overridden to 20%); the other team's
    series and our default job names count for nothing; QueueBacklog is gone."""
    config = tmp_path / "platform.yml"
    config.write_text(yaml.safe_dump(OTHER))
    out = tmp_path / "rules"
    for command in (["alerts", "build"], ["slo", "build"]):
        answer = cli(*command, "--platform", str(config), "--out", str(out))
        assert answer.returncode == 0, answer.stderr
    promtool = require_tool("promtool", "prometheus")
    files = sorted(out.glob("*.rules.yml"))
    assert [path.name for path in files] == [path.name for path in RULE_FILES]
    result = run(promtool, "check", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    exprs = "\n".join(rule["expr"] for path in files for group in yaml.safe_load(path.read_text())["groups"]
                      for rule in group["rules"])
    assert "QueueBacklog" not in "\n".join(path.read_text() for path in files)
    assert "cluster, namespace" not in exprs and "posegen-" not in exprs
    assert "by (k8s_cluster, env)" in exprs and "max without (instance, kubernetes_pod_name)" in exprs
    rules = {rule.get("alert"): rule for group in yaml.safe_load((out / "pose-generator.rules.yml").read_text())
             ["groups"] for rule in group["rules"]}
    assert "posegen:generation_failure_ratio:rate1h > 0.2\n" in rules["HighFailureRate"]["expr"]
    assert "0.2" in rules["HighFailureRate"]["annotations"]["threshold_override"]
    assert rules["HighFailureRate"]["annotations"]["runbook_url"] == \
        "https://wiki.example.org/runbooks/HighFailureRate.md"

    tests = {
        "rule_files": [str(path) for path in files],
        "evaluation_interval": "1m",
        "tests": [{
            "name": "fires: only the environment failing past the overridden threshold pages",
            "interval": "1m",
            "input_series": [
                *other_series("prod", 3), *other_series("prod", 3, replica="exporter-1"),
                *other_series("staging", 1.5),
                # Another team's exporter and a series with our default job name: never read.
                *other_series("staging", 9, team="search"), *other_series("staging", 9, job="posegen-exporter"),
            ],
            "promql_expr_test": [{
                "expr": 'ALERTS{alertname="HighFailureRate"}', "eval_time": "80m",
                "exp_samples": [{"labels": 'ALERTS{alertname="HighFailureRate",alertstate="firing",area="generation",'
                                           'env="prod",k8s_cluster="eu1",severity="critical"}', "value": 1}],
            }, {
                "expr": "posegen:generations_finished:increase1h", "eval_time": "80m",
                "exp_samples": [
                    {"labels": 'posegen:generations_finished:increase1h{env="prod",k8s_cluster="eu1"}', "value": 600},
                    {"labels": 'posegen:generations_finished:increase1h{env="staging",k8s_cluster="eu1"}',
                     "value": 600},
                ],
            }],
        }],
    }
    path = tmp_path / "other.test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run(promtool, "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"selectors": {**OTHER["selectors"], "api": "job=posegen-api"}}, "selectors.api"),
        ({"selectors": {k: v for k, v in OTHER["selectors"].items() if k != "canary"}}, "selectors"),
        ({"group_labels": ["cluster", "name-space"]}, "group_labels"),
        ({"replica_labels": ["instance", "env"]}, "replica_labels"),
        ({"alerts": {"HighFailureRat": {"enabled": False}}}, "alerts.HighFailureRat"),
        ({"alerts": {"ApiTargetDown": {"threshold": 1}}}, "alerts.ApiTargetDown.threshold"),
        ({"alerts": {"HighFailureRate": {"threshold": "ten"}}}, "alerts.HighFailureRate.threshold"),
        ({"alerts": {"HighFailureRate": {"threshold": float("nan")}}}, "alerts.HighFailureRate.threshold"),
        ({"alerts": {"QueueOverloaded": {"threshold": float("inf")}}}, "alerts.QueueOverloaded.threshold"),
        ({"selectors": {**OTHER["selectors"], "api": 'job="ml-api",team="ml #1"'}}, "selectors.api"),
        ({"selectors": {**OTHER["selectors"], "exporter": 'job="ml-exporter",team="a: b"'}}, "selectors.exporter"),
        ({"alerts": {"GenerationSuccessBudgetBurn": {"enabled": False}}}, "alerts/slos.yml"),
        ({"links": {**OTHER["links"], "grafana_url": "grafana.example.org"}}, "links.grafana_url"),
    ],
)
def test_a_bad_config_refuses_to_build_with_one_line(tmp_path: Path, change: dict, problem: str) -> None:
    config = tmp_path / "platform.yml"
    config.write_text(yaml.safe_dump({**OTHER, **change}))
    # Both builds load the config the same way (alerts.platform.load); the SLO build is checked once.
    commands = [["alerts", "build"], ["slo", "build"]] if problem == "selectors.api" else [["alerts", "build"]]
    for command in commands:
        answer = cli(*command, "--platform", str(config), "--out", str(tmp_path / "out"))
        assert answer.returncode == 2, (command, answer.stdout, answer.stderr)
        lines = answer.stderr.strip().splitlines()
        assert len(lines) == 1 and problem in lines[0], answer.stderr
    assert not (tmp_path / "out").exists()


# --- retention ---------------------------------------------------------------------------------------

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def seconds(duration: str) -> float:
    """A Prometheus duration (``30d``, ``1h30m``) in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration}"
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def longest_read(expr: str) -> float:
    """The oldest sample an expression reads, in seconds before the evaluation: its longest range (or
    subquery range) plus any offset in the same expression."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    ranges = [seconds(m) for m in re.findall(r"\[(\w+)(?::\w*)?\]", text)]
    offsets = [seconds(m) for m in re.findall(r"\boffset\s+(\w+)", text)]
    return max(ranges, default=0) + max(offsets, default=0)


def shipped_retentions() -> dict[str, float]:
    """Every Prometheus we ship, with the history it keeps (seconds): compose's command-line flag and any
    Prometheus object (Prometheus Operator) or container flag in deploy/k8s. Prometheus's default is 15d."""
    found: dict[str, float] = {}
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        if "prometheus" in str(service.get("image", "")):
            flags = [flag for flag in service.get("command", []) if flag.startswith("--storage.tsdb.retention.time=")]
            found[f"docker-compose {name}"] = seconds(flags[-1].split("=", 1)[1]) if flags else seconds("15d")
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            if doc.get("kind") == "Prometheus":
                found[f"{path.name} {doc['metadata']['name']}"] = seconds(doc["spec"].get("retention", "24h"))
            for container in (doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])):
                if "prometheus" in str(container.get("image", "")).split("/")[-1].split(":")[0]:
                    flags = [a for a in container.get("args", []) if a.startswith("--storage.tsdb.retention.time=")]
                    found[f"{path.name} {container['name']}"] = (seconds(flags[-1].split("=", 1)[1]) if flags
                                                                else seconds("15d"))
    return found


def test_every_shipped_prometheus_keeps_the_longest_range_a_rule_reads() -> None:
    rules = [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
             for rule in group["rules"]]
    longest = max(rules, key=lambda rule: longest_read(rule["expr"]))
    needed = longest_read(longest["expr"])
    # The SLO budget window is read from its recordings, never from 30 days of raw series.
    assert needed == seconds("30d"), longest.get("record") or longest.get("alert")
    assert "avg_over_time(posegen_slo:" in longest["expr"]
    retentions = shipped_retentions()
    assert "docker-compose prometheus" in retentions
    for where, kept in retentions.items():
        assert kept >= needed, (f"{where} keeps {kept / 86400:g} days of history; the rules read "
                                f"{needed / 86400:g} ({longest.get('record') or longest.get('alert')})")


def test_the_retention_check_reads_ranges_subqueries_offsets_and_defaults() -> None:
    assert longest_read('avg_over_time(x{a="[99d]"}[30d])') == seconds("30d")
    assert longest_read("max(x) > max(x offset 15m) and avg_over_time(y[10m:])") == seconds("25m")
    assert seconds("1h30m") == 5400


# --- dashboards --------------------------------------------------------------------------------------


def dashboard_queries(boards: dict[str, dict]) -> list[tuple[str, str]]:
    """(dashboard/panel, expr) of every panel target, rows' panels included."""
    found = []

    def walk(name: str, panels: list[dict]) -> None:
        for panel in panels:
            found.extend((f"{name} / {panel.get('title')}", t["expr"]) for t in panel.get("targets", [])
                         if t.get("expr"))
            walk(name, panel.get("panels", []))

    for name, board in boards.items():
        walk(name, board["panels"])
    return found


def test_every_dashboard_query_follows_the_environment_variables_and_counts_replicas_once() -> None:
    from dashboards import build_dashboards
    from dashboards.scoping import exporter_series

    boards = build_dashboards()
    for name, board in boards.items():
        names = [v["name"] for v in board["templating"]["list"]]
        assert names[:3] == ["datasource", "cluster", "namespace"], name
    queries = dashboard_queries(boards)
    assert len(queries) > 40
    for where, expr in queries:
        text = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: m.group(0) if "$" in m.group(0) else '""', expr)
        for selector, inner in re.findall(r"(?<![\w:$])([a-zA-Z_:][\w:]*)\{([^}]*)\}", text):
            assert 'cluster=~"$cluster"' in inner and 'namespace=~"$namespace"' in inner, (where, selector)
        for match in re.finditer(r"(?<![\w:$])([a-zA-Z_:][\w:]*)\{", expr):
            if exporter_series(match.group(1)):
                assert 'job="posegen-exporter"' in expr[match.end():match.end() + 40], (where, match.group(1))
                assert re.search(r"max without \(instance, pod\) \((\w+\()?$", expr[:match.start()]), \
                    (where, match.group(1))


def test_dashboards_build_with_another_platform(tmp_path: Path) -> None:
    config = tmp_path / "platform.yml"
    config.write_text(yaml.safe_dump(OTHER))
    answer = cli("dashboards", "build", "--platform", str(config), "--out", str(tmp_path / "build"),
                 "--k8s-out", str(tmp_path / "no-k8s"))
    assert answer.returncode == 0, answer.stderr
    import json

    board = json.loads((tmp_path / "build" / "pose-generator-overview.json").read_text())
    assert [v["name"] for v in board["templating"]["list"]][1:3] == ["k8s_cluster", "env"]
    text = json.dumps(board)
    assert 'k8s_cluster=~\\"$k8s_cluster\\",env=~\\"$env\\"' in text and "cluster=~\\\"$cluster" not in text
    assert 'max without (instance, kubernetes_pod_name) (pose_queue_depth{job=\\"ml-exporter\\",team=\\"ml\\"' in text
