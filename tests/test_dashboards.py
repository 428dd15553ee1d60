"""Dashboards as code: the committed JSON is what the grafanalib source builds, and every panel is usable."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dashboards import build_dashboards, render, write_dashboards
from tests.support.alerts import CONTRACT_METRICS, ROOT, metric_names, require_tool, run

BUILD = ROOT / "dashboards" / "build"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def panels() -> list[tuple[str, dict]]:
    """Every non-row panel of every dashboard, with its dashboard's file name."""
    return [
        (name, panel)
        for name, dashboard in build_dashboards().items()
        for panel in dashboard["panels"]
        if panel["type"] != "row"
    ]


def by_title(title: str) -> dict:
    return next(panel for _, panel in panels() if panel["title"] == title)


def steps(panel: dict) -> list[tuple[object, str]]:
    thresholds = panel["fieldConfig"]["defaults"]["thresholds"]
    return [(step["value"], step["color"]) for step in thresholds["steps"]]


def test_committed_build_matches_the_source() -> None:
    built = build_dashboards()
    assert sorted(path.name for path in BUILD.glob("*.json")) == sorted(built), (
        "dashboards/build is stale: run `posegen dashboards build`"
    )
    for name, dashboard in built.items():
        assert (BUILD / name).read_text(encoding="utf-8") == render(dashboard), (
            f"dashboards/build/{name} is stale: run `posegen dashboards build`"
        )


def test_rebuilding_is_byte_identical(tmp_path: Path) -> None:
    first = {path.name: path.read_bytes() for path in write_dashboards(tmp_path / "a")}
    second = {path.name: path.read_bytes() for path in write_dashboards(tmp_path / "b")}
    assert first == second
    assert first == {name: (BUILD / name).read_bytes() for name in first}


def test_dashboards_offer_a_prometheus_datasource_variable() -> None:
    for name, dashboard in build_dashboards().items():
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", name
        assert variables["datasource"]["query"] == "prometheus", name


def test_every_panel_reads_the_datasource_variable() -> None:
    for name, panel in panels():
        assert panel["datasource"] == DATASOURCE, (name, panel["title"])
        assert panel["targets"], (name, panel["title"])
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, (name, panel["title"])


def test_every_panel_has_a_unit_and_ordered_thresholds() -> None:
    for name, panel in panels():
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), (name, panel["title"])
        levels = steps(panel)
        assert levels and levels[0][0] is None, (name, panel["title"])
        values = [value for value, _ in levels[1:]]
        assert values == sorted(values), (name, panel["title"])


def recorded_series() -> set[str]:
    """Series the project's recording rules write (the SLO dashboard reads those)."""
    return {rule["record"] for path in (ROOT / "alerts" / "rules").glob("*.yml")
            for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "record" in rule}


def test_every_query_uses_only_contract_metrics() -> None:
    allowed = CONTRACT_METRICS | recorded_series()
    for name, panel in panels():
        for target in panel["targets"]:
            unknown = metric_names(target["expr"]) - allowed
            assert not unknown, f"{name} / {panel['title']}: unknown metrics {unknown}"


@pytest.mark.tools
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query as a recording rule expression."""
    rules = [
        {"record": f"dashboard:query_{index}", "expr": target["expr"]}
        for index, target in enumerate(target for _, panel in panels() for target in panel["targets"])
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    result = run(require_tool("promtool", "prometheus"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_seed_panels_with_their_queries_and_thresholds() -> None:
    generation_rate = by_title("Generation Rate")
    assert generation_rate["type"] == "timeseries"
    assert "rate(pose_generations_total" in generation_rate["targets"][0]["expr"]

    success_rate = by_title("Success Rate")
    assert success_rate["type"] == "gauge"
    assert [value for value, _ in steps(success_rate)] == [None, 90, 95]
    assert "> 0)" in success_rate["targets"][0]["expr"], "the ratio must not divide by zero when idle"

    queue_depth = by_title("Queue Depth")
    assert queue_depth["type"] == "timeseries"
    # The seed's queries, fitted to a shared Prometheus by dashboards/scoping.py (tests/test_platform.py).
    env = 'cluster=~"$cluster",namespace=~"$namespace"'
    exporter = f'job="posegen-exporter",{env}'
    assert queue_depth["targets"][0]["expr"] == f"max without (instance, pod) (pose_queue_depth{{{exporter}}})"
    assert [value for value, _ in steps(queue_depth)] == [None, 100, 500]

    average_duration = by_title("Average Duration")
    assert average_duration["fieldConfig"]["defaults"]["unit"] == "s"
    assert f"pose_generation_duration_seconds_sum{{{exporter}}}[5m]" in average_duration["targets"][0]["expr"]
    assert f"pose_generation_duration_seconds_count{{{exporter}}}[5m]" in average_duration["targets"][0]["expr"]
    assert [value for value, _ in steps(average_duration)] == [None, 30, 60]

    errors = by_title("Error Rate by Type")
    assert errors["type"] == "barchart"
    errors_expr = f"sum by (error_type) (max without (instance, pod) (pose_errors_total{{{exporter}}}))"
    assert errors["targets"][0]["expr"] == errors_expr


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    for name, dashboard in build_dashboards().items():
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in dashboard["panels"]:
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, (name, panel["title"])


def test_grafana_provisioning_loads_the_built_dashboards() -> None:
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/posegen.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    assert f"../dashboards/build:{path}:ro" in compose["services"]["grafana"]["volumes"]


def test_job_and_instance_variables_drill_from_the_fleet_to_one_process() -> None:
    for name, dashboard in build_dashboards().items():
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
        env = 'cluster=~"$cluster",namespace=~"$namespace"'  # alerts/platform.yml's group_labels
        assert variables["job"]["query"] == f"label_values(pose_build_info{{{env}}}, job)", name
        assert variables["instance"]["query"] == f'label_values(pose_build_info{{{env},job=~"$job"}}, instance)', name
        assert all(variables[v]["includeAll"] and variables[v]["allValue"] == ".+" for v in ("job", "instance"))
        assert any(link["type"] == "dashboards" and link["tags"] == ["posegen"] for link in dashboard["links"]), name
    for title in ("Versions Running", "Worker Operations (p95)"):
        assert 'job=~"$job", instance=~"$instance"' in by_title(title)["targets"][0]["expr"], title


def test_deploy_annotation_queries_build_info() -> None:
    for name, dashboard in build_dashboards().items():
        (deploys,) = [a for a in dashboard["annotations"]["list"] if a["name"] == "Deploys"]
        assert "pose_build_info" in deploys["expr"] and "offset" in deploys["expr"], name
        assert deploys["datasource"] == DATASOURCE, name


def test_slo_dashboard_shows_budget_burn_and_sli_per_slo_and_links_both_ways() -> None:
    from alerts.slo_spec import load_spec

    boards = build_dashboards()
    slos = boards["pose-generator-slos.json"]
    overview = boards["pose-generator-overview.json"]
    assert slos["title"] == "Pose Generator — SLOs"
    # Linked both ways: each offers the drop-down of the dashboards tagged posegen, and both are tagged so.
    assert "posegen" in slos["tags"] and "posegen" in overview["tags"]
    for board in (slos, overview):
        link = board["links"][0]
        assert (link["type"], link["tags"], link["keepTime"]) == ("dashboards", ["posegen"], True)
    titles = {panel["title"]: panel for panel in slos["panels"] if panel["type"] != "row"}
    for slo in load_spec().slos:
        budget = titles[f"{slo.title}: Error Budget Remaining"]
        env = 'cluster=~"$cluster",namespace=~"$namespace"'
        assert budget["targets"][0]["expr"] == f'posegen_slo:error_budget_remaining:ratio{{slo="{slo.name}",{env}}}'
        burn = titles[f"{slo.title}: Burn Rate per Tier"]
        assert [t["legendFormat"] for t in burn["targets"]] == ["1h (page)", "6h (page)", "3d (ticket)"]
        assert [value for value, _ in steps(burn)] == [None, 1, 6, 14.4]
        sli = titles[f"{slo.title}: SLI"]
        assert [value for value, _ in steps(sli)] == [None, slo.objective]
