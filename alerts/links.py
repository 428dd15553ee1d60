"""Clickable context for every alert: an absolute ``runbook_url`` and a ``dashboard_url`` annotation.

Both are absolute URLs from two bases (settings ``POSEGEN_RUNBOOK_BASE_URL`` and ``POSEGEN_GRAFANA_URL``).
The committed rule files carry the defaults of ``alerts/platform.yml`` (``links``; the same as
:data:`DEFAULT_RUNBOOK_BASE`, :data:`DEFAULT_GRAFANA_URL` and the settings' defaults, a test ties them);
``posegen alerts build --out DIR`` writes deployable copies with the configured bases, and
``posegen alerts build`` (no ``--out``) re-renders the committed ones from ``alerts/templates`` (e.g. after
a dashboard's panel ids moved). A test fails when they are stale.

``dashboard_url`` opens the alert's panel (``viewPanel``) from an hour before to ten minutes after the
rule evaluation that rendered it: Prometheus renders annotations at every evaluation, so the
notification sent when the alert fires carries the window around that moment.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

from alerts import page_context, suppression
from alerts.platform import Platform
from alerts.platform import load as load_platform
from alerts.slo_spec import load_spec
from dashboards import build_dashboards

# The defaults of the settings (app/settings.py), which a test ties to these.
DEFAULT_RUNBOOK_BASE = "https://github.com/posegen/pose-generator/blob/main/alerts/runbooks"
DEFAULT_GRAFANA_URL = "http://localhost:3000"

OVERVIEW = ("pose-generator-overview.json", "posegen-overview")
SLOS = ("pose-generator-slos.json", "posegen-slos")

# The panel that shows what each hand-written alert measures.
PANELS: dict[str, tuple[tuple[str, str], str]] = {
    "HighFailureRate": (OVERVIEW, "Success Rate"),
    "SuccessRateDegraded": (OVERVIEW, "Success Rate"),
    "SlowGeneration": (OVERVIEW, "Average Duration"),
    "PoseTimeHigh": (OVERVIEW, "Pose Total"),
    "PoseTimeCritical": (OVERVIEW, "Pose Total"),
    "QueueBacklog": (OVERVIEW, "Queue Jobs by State"),
    "QueueDepthHigh": (OVERVIEW, "Queue Depth"),
    "QueueOverloaded": (OVERVIEW, "Queue Depth"),
    "CreditRefundSpike": (OVERVIEW, "Credits Refunded per Hour"),
    "RefundRateHigh": (OVERVIEW, "Refund Rate"),
    "RefundRateCritical": (OVERVIEW, "Refund Rate"),
    "WorkerDowntime": (OVERVIEW, "Workers by State"),
    "ApiTargetDown": (OVERVIEW, "API Request Rate"),
    "ApiServerErrors": (OVERVIEW, "API 5xx Ratio"),
    "ExporterSourceDown": (OVERVIEW, "Exporter Sources"),
    "ExporterTargetDown": (OVERVIEW, "Exporter Scrape Duration"),
    "Watchdog": (OVERVIEW, "Exporter Sources"),
    "ScrapeJobAbsent": (OVERVIEW, "Exporter Sources"),
    "KeySeriesAbsent": (OVERVIEW, "Exporter Sources"),
    "ProviderSaturated": (OVERVIEW, "Provider Slots: In Use vs Cap"),
    "GenerationStuck": (OVERVIEW, "Oldest Running Generation"),
    "CanaryFailing": (OVERVIEW, "Canary Runs"),
}

_FROM = '{{ with query "vector((time() - 3600) * 1000)" }}{{ . | first | value | printf "%.0f" }}{{ end }}'
_TO = '{{ with query "vector((time() + 600) * 1000)" }}{{ . | first | value | printf "%.0f" }}{{ end }}'


@cache
def _panel_ids() -> dict[tuple[str, str], int]:
    return {(file, panel["title"]): int(panel["id"])
            for file, board in build_dashboards().items() for panel in board["panels"] if "title" in panel}


def panel_id(dashboard_file: str, title: str) -> int:
    """The id of the panel titled ``title`` in a built dashboard; KeyError names it when missing."""
    try:
        return _panel_ids()[(dashboard_file, title)]
    except KeyError:
        raise KeyError(f"no panel {title!r} in {dashboard_file}") from None


def runbook_url(alert: str, base: str = DEFAULT_RUNBOOK_BASE) -> str:
    return f"{base.rstrip('/')}/{alert}.md"


def dashboard_url(dashboard: tuple[str, str], title: str, grafana: str = DEFAULT_GRAFANA_URL) -> str:
    file, uid = dashboard
    return (f"{grafana.rstrip('/')}/d/{uid}?orgId=1&viewPanel={panel_id(file, title)}"
            f"&from={_FROM}&to={_TO}")


def rendered_dashboard_url(alert: str, at_seconds: int, grafana: str = DEFAULT_GRAFANA_URL) -> str:
    """``dashboard_url`` of ``alert`` as Prometheus renders it in an evaluation at ``at_seconds`` (for tests)."""
    dashboard, title = panel_for(alert)
    url = dashboard_url(dashboard, title, grafana)
    return url.replace(_FROM, str((at_seconds - 3600) * 1000)).replace(_TO, str((at_seconds + 600) * 1000))


def panel_for(alert: str) -> tuple[tuple[str, str], str]:
    """(dashboard, panel title) of an alert: the table above, or the SLO dashboard's burn rate panel."""
    if alert in PANELS:
        return PANELS[alert]
    for slo in load_spec().slos:
        if slo.alert == alert:
            return SLOS, f"{slo.title}: Burn Rate per Tier"
    raise KeyError(f"alert {alert}: no dashboard panel in alerts/links.py")


_ALERT = re.compile(r"^\s*- alert: (\w+)\s*$")
_RUNBOOK = re.compile(r"^(\s*)runbook_url: .*$")
_DASHBOARD = re.compile(r"^\s*dashboard_url: .*$")


def relink(text: str, runbook_base: str = DEFAULT_RUNBOOK_BASE, grafana: str = DEFAULT_GRAFANA_URL,
           group_labels: Sequence[str] | None = None, platform: Platform | None = None) -> str:
    """A rule file's text with every alert's ``runbook_url`` and ``dashboard_url`` (re)written, followed by
    the page context annotations (alerts/page_context.py), and every expression with its suppression while
    a cause pages (alerts/suppression.py), both per environment (``group_labels``; default: those of
    ``alerts/platform.yml``); the rest kept."""
    platform = platform or load_platform()
    if group_labels is None:
        group_labels = platform.group_labels
    selectors = [platform.selectors[job] for job in sorted(platform.selectors)]
    out: list[str] = []
    alert = None
    lines = text.split("\n")
    skip_written = False
    for line in lines:
        if skip_written and (_DASHBOARD.match(line) or page_context.is_context_line(line)):
            continue
        skip_written = False
        if match := _ALERT.match(line):
            alert = match.group(1)
        if (match := _RUNBOOK.match(line)) and alert:
            indent = match.group(1)
            dashboard, title = panel_for(alert)
            out.append(f"{indent}runbook_url: {runbook_url(alert, runbook_base)}")
            out.append(f"{indent}dashboard_url: '{dashboard_url(dashboard, title, grafana)}'")
            out.extend(page_context.lines(alert, indent, group_labels, selectors, platform.selectors["exporter"]))
            skip_written = True
            continue
        out.append(line)
    return suppression.apply("\n".join(out), group_labels)
