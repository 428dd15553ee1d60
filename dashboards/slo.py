"""The "Pose Generator — SLOs" Grafana dashboard: error budget, burn rate per tier and SLI, per SLO.

Built from the same spec as the rules (``alerts/slos.yml``) and reading only the series those rules
record (``posegen_slo:*``), so the numbers on screen are the ones the burn-rate alerts compare.
One row per SLO: budget remaining over the 30-day window, the burn rate of each tier's long window
with the tiers' levels as thresholds, and the SLI over 5 minutes and one hour against the objective.
"""

from __future__ import annotations

from grafanalib.core import Dashboard, Stat, Time

from alerts.slo_spec import SLO, Spec, load_spec, record_name
from dashboards.panels import (
    DATASOURCE,
    GREEN,
    ORANGE,
    RED,
    posegen_dashboard,
    steps,
    target,
    timeseries,
)

UID = "posegen-slos"


def slo_panels(spec: Spec, slo: SLO) -> list[tuple[int, object]]:
    sel = slo.selector
    per_budget = f"{1 / slo.budget:.6g}"
    burn_levels = sorted({tier.burn_rate(spec.window) for tier in spec.tiers})
    budget = Stat(
        title=f"{slo.title}: Error Budget Remaining",
        description=f"Share of the {spec.window} error budget of \"{slo.description}\" "
        f"(objective {slo.objective:.1%}) not yet spent. 100% when idle; below 0 the objective is missed.",
        dataSource=DATASOURCE,
        targets=[target(f"posegen_slo:error_budget_remaining:ratio{sel}", "remaining")],
        format="percentunit",
        colorMode="background",
        graphMode="area",
        reduceCalc="lastNotNull",
        thresholds=steps(RED, (0, ORANGE), (0.25, GREEN)),
    )
    burn = timeseries(
        f"{slo.title}: Burn Rate per Tier",
        "Error ratio of each tier's long window over the budget (1 - objective): 1 spends the budget exactly "
        f"in {spec.window}. Levels: "
        + ", ".join(f"{t.name} {t.long} > {t.burn_rate(spec.window):g}" for t in spec.tiers)
        + f" (with the {', '.join(t.short for t in spec.tiers)} short windows).",
        [
            target(f"{record_name('sli_error', tier.long)}{sel} * {per_budget}", f"{tier.long} ({tier.name})",
                   chr(ord("A") + index))
            for index, tier in enumerate(spec.tiers)
        ],
        "suffix:x",
        steps(GREEN, *((level, ORANGE if level == min(burn_levels) else RED) for level in burn_levels)),
    )
    sli = timeseries(
        f"{slo.title}: SLI",
        f"Share of good events (\"{slo.description}\") over 5 minutes and one hour; the objective is "
        f"{slo.objective:.1%}. Empty while nothing happens.",
        [
            target(f"1 - {record_name('sli_error', '5m')}{sel}", "5m", "A"),
            target(f"1 - {record_name('sli_error', '1h')}{sel}", "1h", "B"),
        ],
        "percentunit",
        steps(RED, (slo.objective, GREEN)),
    )
    return [(6, budget), (10, burn), (8, sli)]


def slo_dashboard(spec: Spec | None = None) -> Dashboard:
    spec = spec or load_spec()
    # The same variables, deploy markers and dashboard links as the Overview (the budgets are fleet-wide: the job
    # and instance variables only carry over to the Overview).
    return posegen_dashboard(
        title="Pose Generator — SLOs",
        uid=UID,
        description="Error budgets and burn rates of the SLOs in alerts/slos.yml.",
        tags=["posegen", "pose-generator", "slo"],
        refresh="1m",
        time=Time("now-7d", "now"),
        rows=[(f"{slo.title} — {slo.description} ({slo.objective:.1%})", slo_panels(spec, slo)) for slo in spec.slos],
    )
