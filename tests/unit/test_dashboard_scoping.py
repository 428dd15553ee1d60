"""The dashboards count the exporter's replicas once: every family the exporter reports alike on each replica is in
dashboards/scoping.py's EXPORTER_FAMILIES (its series reduced with ``max without (instance, pod)``), tied here to
the metric catalogue, which dashboards/ may not import."""

from __future__ import annotations

from app.metric_catalogue import CATALOGUE, Process
from dashboards.scoping import EXPORTER_FAMILIES

# The exporter's families that describe the replica itself: its health and build, and the servers its own
# connections reach (each replica may read another).
PER_REPLICA = frozenset({"pose_exporter_up", "pose_exporter_scrape_duration_seconds", "pose_exporter_server_changes",
                         "pose_build_info", "pose_redis_server_info", "pose_database_server_info",
                         "pose_database_in_recovery"})


def test_every_family_the_exporter_reports_alike_on_each_replica_is_counted_once() -> None:
    exporter = {declared.family for declared in CATALOGUE if declared.exposed_by == (Process.EXPORTER,)}
    shared = {declared.family for declared in CATALOGUE if Process.EXPORTER in declared.exposed_by} - exporter
    assert PER_REPLICA <= exporter | shared, f"not served by the exporter: {PER_REPLICA - exporter - shared}"
    assert not EXPORTER_FAMILIES & shared, f"served by other processes too: {EXPORTER_FAMILIES & shared}"
    assert EXPORTER_FAMILIES == exporter - PER_REPLICA, (
        f"missing from EXPORTER_FAMILIES: {sorted(exporter - PER_REPLICA - EXPORTER_FAMILIES)}; "
        f"not the exporter's: {sorted(EXPORTER_FAMILIES - exporter)}")
