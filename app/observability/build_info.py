"""``pose_build_info{version, revision} 1``: which release each process runs, for deploy annotations.

``version`` is the package's (``app.__version__``); ``revision`` is the source revision the build was
made from, set at build time in ``POSEGEN_REVISION`` (the Docker image takes it as a build argument),
``unknown`` otherwise. Every process serves it: the API on ``/metrics-prometheus``, each worker on its
``/metrics``, the exporter on ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app import __version__
from app.metric_catalogue import gauge_family


class BuildInfoCollector(Collector):
    def __init__(self, revision: str, version: str = __version__) -> None:
        self.revision = revision
        self.version = version

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = gauge_family("pose_build_info")
        family.add_metric([self.version, self.revision], 1)
        yield family
