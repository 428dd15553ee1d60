"""The panel kit every Pose Generator dashboard is built from (grafanalib): the data source, colours and
threshold steps, targets and time series, the row layout, and what all dashboards share (the fleet's template
variables, the deploy markers, the links between them).
"""

from __future__ import annotations

import attr
from grafanalib.core import (
    Annotations,
    Dashboard,
    DashboardLink,
    GridPos,
    Panel,
    RowPanel,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Per-process panels follow the job and instance variables: from the fleet down to one worker.
PROCESS_SELECTOR = 'job=~"$job", instance=~"$instance"'
PANEL_HEIGHT = 8
GRID_WIDTH = 24

GREEN, ORANGE, RED = "green", "orange", "red"

Steps = list[dict[str, object]]


def steps(base: str, *levels: tuple[float, str]) -> Steps:
    """Grafana threshold steps: a base colour, then ``(value, colour)`` pairs in increasing order.

    Written as Grafana's own ``{"color", "value"}`` objects because grafanalib's ``Threshold`` renders
    the base step's value as the string ``"null"`` rather than JSON ``null``.
    """
    return [{"color": base, "value": None}, *({"color": colour, "value": value} for value, colour in levels)]


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> Target:
    return Target(
        expr=expr,
        legendFormat=legend,
        refId=ref,
        instant=instant,
        format="table" if instant else "time_series",
        intervalFactor=1,
        datasource=DATASOURCE,
    )


def timeseries(
    title: str, description: str, targets: list[Target], unit: str, thresholds: Steps, stacked: bool = False
) -> TimeSeries:
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        unit=unit,
        thresholds=thresholds,
        # Draw threshold lines only where there is a level to compare against.
        thresholdsStyleMode="line" if len(thresholds) > 1 else "off",
        stacking={"mode": "normal", "group": "A"} if stacked else {},
        fillOpacity=20 if stacked else 0,
        legendDisplayMode="list",
        tooltipMode="multi",
    )


def layout(rows: list[tuple[str, list[tuple[int, Panel]]]]) -> list[Panel]:
    """Place each row's panels left to right, wrapping at the grid width, rows stacked top to bottom."""
    placed: list[Panel] = []
    y = 0
    for title, panels in rows:
        placed.append(RowPanel(title=title, gridPos=GridPos(h=1, w=GRID_WIDTH, x=0, y=y)))
        y += 1
        x = 0
        for width, panel in panels:
            if x + width > GRID_WIDTH:
                x, y = 0, y + PANEL_HEIGHT
            placed.append(attr.evolve(panel, gridPos=GridPos(h=PANEL_HEIGHT, w=width, x=x, y=y)))
            x += width
        y += PANEL_HEIGHT
    return placed


# A deploy is a (job, version, revision) that was not running five minutes before.
DEPLOY_ANNOTATION_EXPR = (
    "count by (job, version, revision) (pose_build_info)"
    " unless count by (job, version, revision) (pose_build_info offset 5m)"
)


def deploy_annotation() -> dict[str, object]:
    """A Prometheus-query annotation marking every version change of every job."""
    return {
        "name": "Deploys",
        "datasource": DATASOURCE,
        "enable": True,
        "iconColor": "blue",
        "expr": DEPLOY_ANNOTATION_EXPR,
        "step": "1m",
        "titleFormat": "{{job}} {{version}}",
        "textFormat": "{{job}} now runs {{version}} (revision {{revision}})",
        "tagKeys": "job,version",
        "useValueForTime": False,
    }


def fleet_templating() -> Templating:
    """The data source, then job and instance (every process of the fleet, or one) as template variables."""
    datasource = Template(
        name="datasource",
        label="Data source",
        type="datasource",
        query="prometheus",
        default="Prometheus",
    )
    job = Template(
        name="job", label="Job", query="label_values(pose_build_info, job)", dataSource=DATASOURCE,
        includeAll=True, multi=True, allValue=".+", default="$__all",
    )
    instance = Template(
        name="instance", label="Instance", query='label_values(pose_build_info{job=~"$job"}, instance)',
        dataSource=DATASOURCE, includeAll=True, multi=True, allValue=".+", default="$__all",
    )
    return Templating(list=[datasource, job, instance])


def posegen_links() -> list[DashboardLink]:
    """A drop-down of every dashboard tagged ``posegen`` (Overview, SLOs), keeping time and variables."""
    return [DashboardLink(title="Pose Generator dashboards", tags=["posegen"], asDropdown=True,
                          includeVars=True, keepTime=True)]


def posegen_dashboard(title: str, uid: str, description: str, tags: list[str], refresh: str, time: Time,
                      rows: list[tuple[str, list[tuple[int, Panel]]]],
                      annotations: tuple[dict[str, object], ...] = ()) -> Dashboard:
    """One of our dashboards: ``rows`` laid out (:func:`layout`) with panel ids assigned, and what all of them
    share: the browser's time zone, a shared crosshair, the fleet's template variables, the deploy markers
    (then ``annotations``) and the links to the others. ``refresh`` is Grafana's interval, e.g. ``"30s"``."""
    return Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=tags,
        timezone="browser",
        refresh=refresh,
        schemaVersion=39,
        graphTooltip=1,
        time=time,
        templating=fleet_templating(),
        annotations=Annotations(list=[deploy_annotation(), *annotations]),
        links=posegen_links(),
        panels=layout(rows),
    ).auto_panel_ids()
