"""Grafana dashboards as code (grafanalib); ``write_dashboards`` renders them into ``dashboards/build/``."""

from dashboards.overview import build_dashboards, write_dashboards

__all__ = ["build_dashboards", "write_dashboards"]
