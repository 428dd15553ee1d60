"""SLOs as code: the generated rules and promtool tests are what alerts/slos.yml builds, and they prove themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alerts import build, slo, slo_spec
from tests.support.alerts import ROOT, require_tool, run

pytestmark = pytest.mark.tools

GENERATED = (slo.RULES_OUT, slo.TESTS_OUT, slo.SLOW_TESTS_OUT)


def test_committed_rules_and_tests_match_the_spec() -> None:
    for path, text in build.slo_files().items():
        assert path in GENERATED
        assert path.read_text(encoding="utf-8") == text, f"{path.relative_to(ROOT)} is stale: run `posegen slo build`"


def test_cli_builds_the_same_files(tmp_path: Path) -> None:
    answer = subprocess.run([sys.executable, "-m", "app.cli", "slo", "build", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert answer.returncode == 0, answer.stderr
    for path in GENERATED:
        assert (tmp_path / path.name).read_text(encoding="utf-8") == path.read_text(encoding="utf-8")


def test_a_bad_spec_is_refused_with_one_line(tmp_path: Path) -> None:
    spec = yaml.safe_load(slo_spec.SPEC.read_text())
    spec["slos"][0]["objective"] = 1.5
    bad = tmp_path / "slos.yml"
    bad.write_text(yaml.safe_dump(spec))
    try:
        slo_spec.load_spec(bad)
    except slo_spec.SpecError as exc:
        assert "objective must be between 0 and 1" in str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError("an objective of 1.5 was accepted")


def test_every_slo_has_every_tier_over_the_standard_windows() -> None:
    spec = slo_spec.load_spec()
    rules = [rule for group in yaml.safe_load(slo.RULES_OUT.read_text())["groups"] for rule in group["rules"]]
    assert {s.name for s in spec.slos} == {"generation-success", "pose-latency", "api-availability"}
    for s in spec.slos:
        records = {rule["record"] for rule in rules if "record" in rule and rule["labels"]["slo"] == s.name}
        for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"):
            assert f"posegen_slo:sli_error:ratio_rate{window}" in records, (s.name, window)
        assert "posegen_slo:error_budget_remaining:ratio" in records
        tiers = {(rule["labels"]["tier"], rule["labels"]["burn_window"], rule["labels"]["severity"])
                 for rule in rules if rule.get("alert") == s.alert}
        assert tiers == {("page", "1h", "critical"), ("page", "6h", "critical"), ("ticket", "3d", "warning")}
    burn = {tier.long: tier.burn_rate(spec.window) for tier in spec.tiers}
    assert burn == {"1h": 14.4, "6h": 6.0, "3d": 1.0}


def test_latency_sli_reads_a_bucket_the_exporter_has() -> None:
    """The 60 s bucket exists in the pose histogram's bounds (migration) and is selected as the exporter writes it."""
    migration = (ROOT / "app/db/migrations/002_exporter_counters.sql").read_text()
    assert "('pose_duration', '{0.1,0.5,1,2,5,10,30,60,120,300}')" in migration
    latency = next(s for s in slo_spec.load_spec().slos if s.name == "pose-latency")
    assert latency.good == 'pose_pose_duration_seconds_bucket{le="60.0"}'


def test_generated_rules_and_tests_pass_promtool() -> None:
    promtool = require_tool("promtool", "prometheus")
    result = run(promtool, "check", "rules", str(slo.RULES_OUT))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(promtool, "test", "rules", str(slo.TESTS_OUT), str(slo.SLOW_TESTS_OUT))
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_tests_catch_a_missing_guard(tmp_path: Path) -> None:
    """Built without the low-traffic guard, the generated quiet-hour and low-traffic scenarios fail."""
    spec = yaml.safe_load(slo_spec.SPEC.read_text())
    spec["guard"] = {"min_events": 0, "min_bad_events": 0}
    spec["slos"] = spec["slos"][:1]
    spec["tiers"] = [tier for tier in spec["tiers"] if tier["long"] == "1h"]
    (tmp_path / "alerts").mkdir()
    spec_path = tmp_path / "alerts" / "slos.yml"
    spec_path.write_text(yaml.safe_dump(spec))
    built = build.slo_files(spec_path)
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    for path, text in built.items():
        (tmp_path / path.parent.name / path.name).write_text(text)
    result = run(require_tool("promtool", "prometheus"), "test", "rules", str(tmp_path / "tests" / slo.TESTS_OUT.name))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "[quiet hour]" in output and "[low-traffic outage]" in output
