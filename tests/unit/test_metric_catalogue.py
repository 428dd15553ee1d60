"""The metric catalogue (app/metric_catalogue.py) against what the processes really build and serve, without
services: the API's registry, a worker endpoint's, the canary's and the exporter's collectors over a Redis that
answers "nothing there" and rows as PostgreSQL returns them."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

from app import metric_catalogue
from app.metric_catalogue import CATALOGUE, MetricType, Process, render_metrics_table

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^pose_[a-z0-9_]+$")
LABEL = re.compile(r"^[a-z_][a-z0-9_]*$")
# What builds a metric; outside the catalogue, none of them may be called.
BUILDERS = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum", "CounterMetricFamily", "GaugeMetricFamily",
            "HistogramMetricFamily", "SummaryMetricFamily", "InfoMetricFamily", "StateSetMetricFamily",
            "GaugeHistogramMetricFamily", "UnknownMetricFamily", "Metric"}


class _Pipeline:
    """A redis-py pipeline over :class:`_EmptyRedis`: every queued command answers as on an empty Redis."""

    def __init__(self, redis: _EmptyRedis) -> None:
        self._redis = redis
        self._replies: list[Any] = []

    def __enter__(self) -> _Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, command: str) -> Any:
        def queue(*args: Any, **kwargs: Any) -> _Pipeline:
            self._replies.append(getattr(self._redis, command)(*args, **kwargs))
            return self
        return queue

    def execute(self) -> list[Any]:
        replies, self._replies = self._replies, []
        return replies


class _EmptyRedis:
    """Just enough of a Redis client whose keys are all missing."""

    def pipeline(self, transaction: bool = True) -> _Pipeline:
        return _Pipeline(self)

    def get(self, key: str) -> None:
        return None

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return {}

    def smembers(self, key: str) -> set[bytes]:
        return set()

    def lindex(self, key: str, index: int) -> None:
        return None

    def eval(self, script: str, numkeys: int, *args: Any) -> tuple[int, None]:
        return 0, None

    def __getattr__(self, command: str) -> Any:  # llen, zcard, zcount, exists, ...: 0
        return lambda *args, **kwargs: 0


def _declared(family: Metric) -> metric_catalogue.MetricSpec:
    return metric_catalogue.spec(f"{family.name}_total" if family.type == "counter" else family.name)


def _check(families: Iterable[Metric]) -> set[str]:
    """Each ``pose_*`` family as declared (type, help, label names of its samples); returns their names."""
    seen = set()
    for family in families:
        if not family.name.startswith("pose_"):
            continue  # prometheus-client's process_* and python_* collectors
        declared = _declared(family)
        assert family.type == declared.type.value, family.name
        assert family.documentation == declared.help, family.name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(declared.labels), (family.name, sample.labels)
        seen.add(declared.name)
    return seen


def _names(process: Process) -> set[str]:
    return {declared.name for declared in CATALOGUE if process in declared.exposed_by}


def test_every_metric_is_declared_once_with_a_valid_name_type_labels_and_help() -> None:
    names = [declared.name for declared in CATALOGUE]
    assert len(names) == len(set(names))
    for declared in CATALOGUE:
        assert NAME.match(declared.name), declared.name
        assert declared.name.endswith("_total") == (declared.type is MetricType.COUNTER), declared.name
        assert all(LABEL.match(label) and label != "le" for label in declared.labels), declared.name
        assert declared.help.strip() and declared.source.strip() and declared.exposed_by, declared.name


def test_the_metrics_table_has_a_row_for_every_catalogue_entry() -> None:
    rows = render_metrics_table().splitlines()
    assert rows[0].startswith("| Metric | Type | Labels |") and len(rows) == 2 + len(CATALOGUE)
    for row, declared in zip(rows[2:], CATALOGUE, strict=True):
        assert row.startswith(f"| `{declared.name}` | {declared.type.value} |"), row
        assert row.count(" | ") == 5, row  # six cells: no help or source text broke the table


def test_contract_series_are_the_sample_names_of_every_entry() -> None:
    series = metric_catalogue.contract_series()
    assert {"pose_generations_total", "pose_queue_depth", "pose_generation_duration_seconds_bucket",
            "pose_generation_duration_seconds_sum", "pose_generation_duration_seconds_count"} <= series
    assert "pose_generation_duration_seconds" not in series
    assert len(series) == sum(len(declared.series) for declared in CATALOGUE)


def _builder_calls(tree: ast.Module) -> list[int]:
    """Lines of ``tree`` that call a prometheus-client builder: by the name it was imported as (``Counter``,
    ``from prometheus_client import Counter as C``) or through a name bound to one of its modules
    (``prometheus_client.Counter``, ``import prometheus_client.core as pc``, ``from prometheus_client import
    metrics_core``)."""
    builders, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "prometheus_client":
                    modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prometheus_client":
            for alias in node.names:
                (builders if alias.name in BUILDERS else modules).add(alias.asname or alias.name)
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name):
            builds = node.func.id in builders
        elif isinstance(node.func, ast.Attribute):
            root = node.func.value
            while isinstance(root, ast.Attribute):
                root = root.value
            builds = node.func.attr in BUILDERS and isinstance(root, ast.Name) and root.id in modules
        else:
            builds = False
        if builds:
            lines.append(node.lineno)
    return lines


def test_no_metric_is_built_outside_the_catalogue() -> None:
    """Every family the processes serve is built by app/metric_catalogue.py's builders, so none is undeclared."""
    found = []
    for path in [*(ROOT / "app").rglob("*.py"), *(ROOT / "exporter").rglob("*.py")]:
        if path == ROOT / "app" / "metric_catalogue.py":
            continue
        found += [f"{path.relative_to(ROOT)}:{line}" for line in _builder_calls(ast.parse(path.read_text("utf-8")))]
    assert found == []


@pytest.mark.parametrize("source", [
    "from prometheus_client import Counter\nCounter('pose_x', 'h')",
    "from prometheus_client import Gauge as G\nG('pose_x', 'h')",
    "import prometheus_client\nprometheus_client.Histogram('pose_x', 'h')",
    "import prometheus_client.core as pc\npc.GaugeMetricFamily('pose_x', 'h', value=1)",
    "import prometheus_client.core\nprometheus_client.core.CounterMetricFamily('pose_x', 'h')",
    "from prometheus_client import metrics_core\nmetrics_core.Metric('pose_x', 'h', 'gauge')",
    "from prometheus_client.metrics_core import Metric\nMetric('pose_x', 'h', 'gauge')",
])
def test_a_builder_is_found_however_it_is_imported(source: str) -> None:
    assert _builder_calls(ast.parse(source)) == [2]


def test_other_counters_are_not_builders() -> None:
    assert _builder_calls(ast.parse("from collections import Counter\nCounter('abc')")) == []


def test_an_undeclared_or_mistyped_name_cannot_be_built() -> None:
    for build, name in ((metric_catalogue.gauge_family, "pose_not_declared"),
                        (metric_catalogue.gauge_family, "pose_generations_total")):
        try:
            build(name)
        except (KeyError, TypeError) as exc:
            assert name in str(exc)
        else:
            raise AssertionError(f"{name} was built")


def test_the_api_registry_serves_what_the_catalogue_declares_for_the_api() -> None:
    from app.api import connection_bounds, prometheus_metrics, rate_limit  # noqa: F401 - they register the metrics

    connection_bounds._refused_heads()
    prometheus_metrics.REQUESTS.labels("GET", "/health", "200")
    prometheus_metrics.LATENCY.labels("GET", "/health")
    prometheus_metrics.BATCH_SIZE.labels("generation")
    from app.observability.performance import OPERATION_SECONDS

    OPERATION_SECONDS.labels("provider_call")
    assert _check(REGISTRY.collect()) == _names(Process.API)


def test_a_worker_endpoint_serves_what_the_catalogue_declares_for_the_workers() -> None:
    from app.observability.worker_metrics import worker_registry

    registry = worker_registry(_EmptyRedis(), "host:9109", "abc123", {"FLUX_API_ERROR": 0.5})  # type: ignore[arg-type]
    assert _check(registry.collect()) == _names(Process.WORKER)


def test_the_canary_serves_what_the_catalogue_declares_for_it() -> None:
    from app.canary import CanaryMetrics, RunResult

    metrics = CanaryMetrics("abc123")
    metrics.record(RunResult("success", None, "gen_1", 1.5))
    assert _check(metrics.registry.collect()) == _names(Process.CANARY)


def test_the_exporter_serves_what_the_catalogue_declares_for_it() -> None:
    from app.observability.build_info import BuildInfoCollector
    from app.observability.fleet_metrics import FleetMetricsCollector
    from exporter.collectors import (
        CombinedCollector,
        LimitsCollector,
        ProviderSlotsCollector,
        QueueCollector,
        ServerChanges,
        SourcesCollector,
        _domain_families,
        database_server_family,
        redis_server_family,
    )

    redis: Any = _EmptyRedis()
    # Rows as the exporter's read returns them: (metric, label, le, value, sum_ms, exemplar's trace_id,
    # generation_id, value_ms, observed_at); one bucket per histogram, and a finished generation.
    rows = [("last_finished_generation_ms", "", None, 1_700_000_000_000, None, None, None, None, None),
            *((key, "", 10.0, 1, 2500, "abc", "gen_1", 2500, 1_700_000_000.0)
              for key in ("generation_duration", "provider_call", "upload", "queue_wait", "pose_duration"))]
    redis_source = CombinedCollector(QueueCollector(redis), ProviderSlotsCollector(redis, 4),
                                     FleetMetricsCollector(redis))
    sources = SourcesCollector({"redis": redis_source}, timeout_seconds=5.0)
    try:
        families = [*sources.collect(), *_domain_families(rows), *LimitsCollector(60.0).collect(),
                    *ServerChanges().families(), *BuildInfoCollector("abc123").collect(),
                    redis_server_family("127.0.0.1:6379"), database_server_family("127.0.0.1:5432")]
    finally:
        sources.close()
    up = next(family for family in families if family.name == "pose_exporter_up")
    assert [sample.value for sample in up.samples] == [1]  # the fake Redis answered every read
    assert _check(families) == _names(Process.EXPORTER)
