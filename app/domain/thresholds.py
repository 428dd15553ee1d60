"""The seed's health thresholds: its four tables (success rate, average time per pose, queue depth, refund
rate) and the periods they are judged over.

The one source of these numbers: the health-indicators endpoint judges with them, the Overview
dashboard's colour steps are built from them, ``posegen status --period`` offers these periods, and a
test holds the alert rules (``alerts/rules/``) to the same levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum


class MetricsPeriod(StrEnum):
    """The seed's ``period`` values: a rolling window ending now."""

    HOUR = "1h"
    DAY = "24h"
    WEEK = "7d"
    MONTH = "30d"

    @property
    def length(self) -> timedelta:
        return {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7),
                "30d": timedelta(days=30)}[self.value]


class HealthStatus(StrEnum):
    GOOD = "good"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def severity(self) -> int:
        return {"good": 0, "warning": 1, "critical": 2}[self.value]


@dataclass(frozen=True)
class ThresholdTable:
    """One seed table: good beyond ``good``, critical beyond ``critical``, warning in between (inclusive)."""

    key: str
    name: str
    unit: str
    higher_is_better: bool
    good: float
    critical: float
    labels: tuple[str, str, str]
    actions: tuple[str, str, str]

    def status(self, value: float) -> HealthStatus:
        if self.higher_is_better:
            return (HealthStatus.GOOD if value > self.good
                    else HealthStatus.CRITICAL if value < self.critical else HealthStatus.WARNING)
        return (HealthStatus.GOOD if value < self.good
                else HealthStatus.CRITICAL if value > self.critical else HealthStatus.WARNING)

    @property
    def thresholds(self) -> str:
        """The seed's table in one line, e.g. ``good > 95%, warning 90-95%, critical < 90%``."""
        good, bad = (">", "<") if self.higher_is_better else ("<", ">")
        low, high = sorted((self.good, self.critical))
        unit = self.unit if self.unit in ("%", "s") else f" {self.unit}"
        return (f"good {good} {self.good:g}{unit}, warning {low:g}-{high:g}{unit}, "
                f"critical {bad} {self.critical:g}{unit}")


SUCCESS_RATE = ThresholdTable(
    "successRate", "Success Rate", "%", True, 95, 90, ("Good", "Warning", "Critical"),
    ("Normal operation", "Investigate errors", "Immediate action required"))
AVG_TIME_PER_POSE = ThresholdTable(
    "avgTimePerPose", "Avg Time per Pose", "s", False, 30, 60, ("Good", "Slow", "Critical"),
    ("Optimal performance", "Check FLUX API latency", "Investigate bottlenecks"))
QUEUE_DEPTH = ThresholdTable(
    "queueDepth", "Queue Depth", "jobs", False, 100, 500, ("Healthy", "Busy", "Overloaded"),
    ("Normal load", "Monitor closely", "Scale workers"))
REFUND_RATE = ThresholdTable(
    "refundRate", "Refund Rate", "%", False, 5, 10, ("Good", "Warning", "Critical"),
    ("Stable system", "Check failures", "System issues"))
