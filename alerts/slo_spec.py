"""The SLO spec (``alerts/slos.yml``): objectives, the budget window, burn-rate tiers and the low-traffic guard,
read and checked, and the names of the series the SLO rules record (which the dashboards read).

The rules that compile it are :mod:`alerts.slo`; the promtool tests that prove them, :mod:`alerts.slo_scenarios`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from alerts.jobs import JOBS

SPEC = Path(__file__).resolve().parent / "slos.yml"
RECORD_PREFIX = "posegen_slo"
_UNITS = {"m": 1, "h": 60, "d": 1440}


class SpecError(ValueError):
    """alerts/slos.yml is malformed; the message names the field."""


def minutes(duration: str) -> int:
    """``"5m"``, ``"6h"``, ``"3d"`` in minutes."""
    match = re.fullmatch(r"(\d+)([mhd])", duration)
    if not match:
        raise SpecError(f"duration {duration!r}: expected a number and m, h or d")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Tier:
    """One burn-rate tier: ``budget_share`` of the budget gone within ``long`` pages (or tickets)."""

    name: str
    budget_share: float
    long: str
    short: str
    severity: str
    for_: str

    def burn_rate(self, window: str) -> float:
        return round(self.budget_share * minutes(window) / minutes(self.long), 6)


@dataclass(frozen=True)
class TestSeries:
    series: str
    counts: str  # good, bad or all


@dataclass(frozen=True)
class SLO:
    name: str
    alert: str
    area: str
    title: str
    description: str
    objective: float
    good: str
    total: str
    source: str  # the job whose series the SLI reads: a key of alerts/platform.yml's selectors
    test_series: tuple[TestSeries, ...]

    @property
    def budget(self) -> float:
        """The error budget as a ratio of events (1 - objective)."""
        return round(1 - self.objective, 9)

    @property
    def labels(self) -> dict[str, str]:
        return {"slo": self.name, "area": self.area}

    @property
    def selector(self) -> str:
        return f'{{slo="{self.name}"}}'


@dataclass(frozen=True)
class Spec:
    window: str
    tiers: tuple[Tier, ...]
    min_events: int
    min_bad_events: int
    slos: tuple[SLO, ...]


def load_spec(path: Path = SPEC) -> Spec:
    """Read and check the SLO spec; :class:`SpecError` names what is wrong."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        tiers = tuple(
            Tier(t["name"], float(t["budget_share"]), t["long"], t["short"], t["severity"], t["for"])
            for t in raw["tiers"]
        )
        slos = tuple(
            SLO(
                name=s["name"], alert=s["alert"], area=s["area"], title=s["title"], description=s["description"],
                objective=float(s["objective"]), good=s["sli"]["good"], total=s["sli"]["total"], source=s["source"],
                test_series=tuple(TestSeries(t["series"], t["counts"]) for t in s["test_series"]),
            )
            for s in raw["slos"]
        )
        spec = Spec(raw["window"], tiers, int(raw["guard"]["min_events"]), int(raw["guard"]["min_bad_events"]), slos)
    except (KeyError, TypeError) as exc:
        raise SpecError(f"{path}: missing or malformed field {exc}") from None
    for slo in spec.slos:
        if not 0 < slo.objective < 1:
            raise SpecError(f"slo {slo.name}: objective must be between 0 and 1, not {slo.objective}")
        if slo.source not in JOBS:
            raise SpecError(f"slo {slo.name}: source must be one of {', '.join(JOBS)}, not {slo.source!r}")
        if {t.counts for t in slo.test_series} - {"good", "bad", "all"}:
            raise SpecError(f"slo {slo.name}: test_series counts must be good, bad or all")
        fastest = max(tier.burn_rate(spec.window) for tier in spec.tiers)
        if fastest * 1.1 * slo.budget > 1:
            raise SpecError(f"slo {slo.name}: a budget of {slo.budget} cannot burn {fastest}x (over 100% bad)")
    for tier in spec.tiers:
        if minutes(tier.short) >= minutes(tier.long):
            raise SpecError(f"tier {tier.long}: the short window {tier.short} must be shorter than the long one")
    return spec


def record_name(kind: str, window: str) -> str:
    """``posegen_slo:<kind>:<ratio_rate|rate|increase><window>``."""
    operation = {"sli_error": "ratio_rate", "sli_bad": "rate", "sli_total": "rate"}.get(kind, "increase")
    return f"{RECORD_PREFIX}:{kind}:{operation}{window}"
