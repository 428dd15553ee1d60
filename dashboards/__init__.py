"""Grafana dashboards as code (grafanalib); ``write_dashboards`` renders them into ``dashboards/build/``.

The Overview (:mod:`dashboards.overview`) and the SLOs (:mod:`dashboards.slo`) are built from one panel kit
(:mod:`dashboards.panels`) and fitted to the platform config (:mod:`dashboards.scoping`).
"""

from __future__ import annotations

import json
from pathlib import Path

from grafanalib._gen import DashboardEncoder

from alerts.platform import Platform, load
from dashboards.overview import overview_dashboard
from dashboards.scoping import scope_dashboard
from dashboards.slo import slo_dashboard


def build_dashboards(platform: Platform | None = None) -> dict[str, dict]:
    """Every dashboard as Grafana JSON, keyed by its file name under ``dashboards/build/``, fitted to
    ``platform`` (default ``alerts/platform.yml``): environment variables, scoped queries, exporter
    replicas counted once (:mod:`dashboards.scoping`)."""
    platform = platform or load()
    dashboards = {"pose-generator-overview.json": overview_dashboard(), "pose-generator-slos.json": slo_dashboard()}
    # A round trip through the encoder turns grafanalib objects into plain JSON values.
    return {name: scope_dashboard(json.loads(json.dumps(board, cls=DashboardEncoder)), platform)
            for name, board in dashboards.items()}


def render(dashboard: dict) -> str:
    """The committed form of a dashboard: sorted keys, two-space indent, trailing newline."""
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_dashboards(out_dir: Path, platform: Platform | None = None) -> list[Path]:
    """Write every dashboard to ``out_dir`` (byte-identical on rebuild) and return the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, dashboard in sorted(build_dashboards(platform).items()):
        path = out_dir / name
        path.write_text(render(dashboard), encoding="utf-8")
        written.append(path)
    return written
