"""The alert rules page at the levels of the seed's threshold tables (app/domain/thresholds.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from alerts import platform, suppression
from app.domain.thresholds import AVG_TIME_PER_POSE, QUEUE_DEPTH, REFUND_RATE, SUCCESS_RATE, ThresholdTable

RULE_FILES = sorted((Path(__file__).resolve().parents[2] / "alerts" / "rules").glob("*.yml"))
# The condition that opens an alert's expression: `<series> <comparison> <level>`.
CONDITION = re.compile(r"^\s*(?P<series>\S+|max by \([^)]*\) \(\S+\))\s*(?P<op><=|>=|<|>)\s*(?P<level>[0-9.]+)\s*$")
PLATFORM = platform.load()
QUEUE_DEPTH_SERIES = f"max {PLATFORM.by()} ({PLATFORM.select('exporter', 'pose_queue_depth')})"


def warning_condition(table: ThresholdTable, scale: float) -> tuple[str, float]:
    """A value leaves the table's good range (which is strict) at its good level."""
    return ("<=" if table.higher_is_better else ">="), table.good * scale


def critical_condition(table: ThresholdTable, scale: float) -> tuple[str, float]:
    """A value is critical strictly beyond the table's critical level."""
    return ("<" if table.higher_is_better else ">"), table.critical * scale


# alert -> (the series it compares, the comparison and level the table implies). Ratios are 0..1 where the
# tables say percent; the success table's critical level is paged as the failure ratio (> 10% failed).
EXPECTED: dict[str, tuple[str, tuple[str, float]]] = {
    "SuccessRateDegraded": ("posegen:generation_success_ratio:rate1h", warning_condition(SUCCESS_RATE, 0.01)),
    "HighFailureRate": ("posegen:generation_failure_ratio:rate1h", (">", 1 - SUCCESS_RATE.critical / 100)),
    "PoseTimeHigh": ("posegen:pose_duration_seconds:avg15m", warning_condition(AVG_TIME_PER_POSE, 1)),
    "PoseTimeCritical": ("posegen:pose_duration_seconds:avg15m", critical_condition(AVG_TIME_PER_POSE, 1)),
    "QueueDepthHigh": (QUEUE_DEPTH_SERIES, warning_condition(QUEUE_DEPTH, 1)),
    "QueueOverloaded": (QUEUE_DEPTH_SERIES, critical_condition(QUEUE_DEPTH, 1)),
    "RefundRateHigh": ("posegen:credits_refund_ratio:rate1h", warning_condition(REFUND_RATE, 0.01)),
    "RefundRateCritical": ("posegen:credits_refund_ratio:rate1h", critical_condition(REFUND_RATE, 0.01)),
}


def alert_conditions() -> dict[str, tuple[str, str, float]]:
    """Every alert's opening condition: ``{name: (series, comparison, level)}``."""
    found: dict[str, tuple[str, str, float]] = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                # The alert's own condition, without its hold-back while a cause fires (alerts/suppression.py).
                expr = suppression.original(str(rule.get("expr", "")))
                if "alert" in rule and (match := CONDITION.match(expr.splitlines()[0])):
                    found[rule["alert"]] = (match["series"], match["op"], float(match["level"]))
    return found


@pytest.mark.parametrize("alert", sorted(EXPECTED))
def test_alert_levels_are_the_threshold_tables(alert: str) -> None:
    series, (op, level) = EXPECTED[alert]
    found = alert_conditions()
    assert alert in found, f"{alert}: no alert of that name opens with `<series> <comparison> <level>`"
    found_series, found_op, found_level = found[alert]
    assert (found_series, found_op) == (series, op), alert
    assert found_level == pytest.approx(level), alert


def test_the_check_reads_a_condition_and_ignores_its_guards() -> None:
    match = CONDITION.match("posegen:credits_refund_ratio:rate1h >= 0.05")
    assert match is not None and (match["series"], match["op"], match["level"]) == (
        "posegen:credits_refund_ratio:rate1h", ">=", "0.05")
    assert CONDITION.match("and on () posegen:poses_failed:increase1h >= 3 or vector(1)") is None
