"""The worker's ``/metrics``: operation timings of its work-horses, plus the process's own metrics.

Jobs run in forked work-horses that exit after each job, so their in-process
histogram would die with them. At the end of each job the work-horse adds its
observations to a Redis hash of its worker (one pipelined round trip); the
worker process serves them with a custom collector, read at scrape time.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis

from app.observability.build_info import BuildInfoCollector
from app.observability.performance import OPERATION_SECONDS
from app.settings import Settings

KEY_PREFIX = "posegen:worker-operations:"


def stats_key(worker_name: str) -> str:
    return f"{KEY_PREFIX}{worker_name}"


def flush_operation_stats(redis: Redis, worker_name: str, histogram: Histogram = OPERATION_SECONDS) -> None:
    """Add this process's observations to the worker's hash, then forget them locally."""
    increments: dict[str, float] = {}
    for metric in histogram.collect():
        for sample in metric.samples:
            operation = sample.labels.get("operation", "")
            if sample.name.endswith("_bucket"):
                increments[f"{operation}|bucket|{sample.labels['le']}"] = sample.value
            elif sample.name.endswith("_sum"):
                increments[f"{operation}|sum"] = sample.value
    if not increments:
        return
    with redis.pipeline(transaction=False) as pipe:
        for field, value in increments.items():
            if value:
                pipe.hincrbyfloat(stats_key(worker_name), field, value)
        pipe.execute()
    histogram.clear()


class OperationStatsCollector(Collector):
    def __init__(self, redis: Redis, worker_name: str) -> None:
        self._redis = redis
        self._key = stats_key(worker_name)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "pose_operation_duration_seconds",
            "Duration of measured operations in this worker's jobs (FLUX call, upload, pose total, queue wait)",
            labels=["operation"],
        )
        try:
            raw = self._redis.hgetall(self._key)
        except Exception:  # Redis down: no samples this scrape rather than a failed scrape
            raw = {}
        buckets: dict[str, dict[float, float]] = defaultdict(dict)
        sums: dict[str, float] = defaultdict(float)
        for field, value in raw.items():
            operation, kind, *rest = field.decode().split("|")
            if kind == "bucket":
                buckets[operation][float(rest[0])] = float(value)
            else:
                sums[operation] = float(value)
        for operation in sorted(buckets):
            ordered = sorted(buckets[operation].items())
            family.add_metric(
                [operation],
                [(_le(bound), count) for bound, count in ordered],
                sums[operation],
            )
        yield family


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def serve_worker_metrics(
    redis: Redis, worker_name: str, host: str, port: int, settings: Settings | None = None
) -> tuple[WSGIServer, threading.Thread]:
    registry = CollectorRegistry()
    registry.register(OperationStatsCollector(redis, worker_name))
    registry.register(BuildInfoCollector(settings.revision if settings is not None else "unknown"))
    ProcessCollector(registry=registry)
    return start_http_server(port, addr=host, registry=registry)
