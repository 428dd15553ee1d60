"""The workers' ``/metrics``: operation timings of their work-horses, one endpoint per host and port.

Jobs run in forked work-horses that exit after each job, so their in-process
histogram would die with them. At the end of each job the work-horse adds its
observations to a Redis hash (one pipelined round trip); an endpoint serves the
hash with a custom collector, read at scrape time.

The hash belongs to the *endpoint*, not to one worker: every worker on a host
that is given the same ``--metrics-port`` (and every process of a
``posegen worker --processes N`` pool) adds to ``posegen:worker-operations:<host>:<port>``,
and whichever of them holds the port serves the sum. A worker that finds the port
taken keeps working, says so in one log line, and takes the port over when it
frees, so the totals stay exact while workers come and go.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import threading
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis

from app.metric_catalogue import gauge, histogram_family
from app.observability.build_info import BuildInfoCollector
from app.observability.exposition import serve_metrics
from app.observability.logging import get_logger
from app.observability.performance import JOB_OPERATIONS, OPERATION_BUCKETS, OPERATION_SECONDS

KEY_PREFIX = "posegen:worker-operations:"
# A hash nobody adds to for a week (a host that is gone) expires; Prometheus reads a later one as a reset.
KEY_TTL_SECONDS = 7 * 24 * 3600
TAKEOVER_INTERVAL_SECONDS = 5.0

log = get_logger("Worker")

# The endpoint this process's jobs report to; set in the worker process before it forks work-horses.
_group: str | None = None


def metrics_group(port: int) -> str:
    """The name of the endpoint ``port`` on this host: ``"<hostname>:<port>"``."""
    return f"{socket.gethostname()}:{port}"


def use_metrics_group(group: str | None) -> None:
    """Make this process's jobs add their timings to ``group``'s hash (None: keep them to themselves)."""
    global _group
    _group = group


def stats_key(group: str) -> str:
    return f"{KEY_PREFIX}{group}"


def flush_operation_stats(redis: Redis, histogram: Histogram = OPERATION_SECONDS) -> None:
    """Add this process's observations to its endpoint's hash, then forget them locally (no-op when unserved)."""
    if _group is None:
        return
    increments: dict[str, float] = {}
    for metric in histogram.collect():
        for sample in metric.samples:
            operation = sample.labels.get("operation", "")
            if sample.name.endswith("_bucket"):
                increments[f"{operation}|bucket|{sample.labels['le']}"] = sample.value
            elif sample.name.endswith("_sum"):
                increments[f"{operation}|sum"] = sample.value
    if not any(increments.values()):
        return
    key = stats_key(_group)
    with redis.pipeline(transaction=False) as pipe:
        for field, value in increments.items():
            if value:
                pipe.hincrbyfloat(key, field, value)
        pipe.expire(key, KEY_TTL_SECONDS)
        pipe.execute()
    histogram.clear()


class OperationStatsCollector(Collector):
    def __init__(self, redis: Redis, group: str) -> None:
        self._redis = redis
        self._key = stats_key(group)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = histogram_family("pose_operation_duration_seconds")
        try:
            raw = self._redis.hgetall(self._key)
        except Exception:  # Redis down: no samples this scrape rather than a failed scrape
            raw = {}
        buckets: dict[str, dict[float, float]] = defaultdict(dict)
        sums: dict[str, float] = defaultdict(float)
        for field, value in raw.items():
            operation, kind, *rest = (field.decode() if isinstance(field, bytes) else field).split("|")
            if kind == "bucket":
                buckets[operation][float(rest[0])] = float(value)
            else:
                sums[operation] = float(value)
        # Every job operation exists from the first scrape, at 0 until observed: rate() then sees the
        # first observation (a series born with it would hide it).
        for operation in JOB_OPERATIONS:
            observed = buckets[operation]
            for bound in (*OPERATION_BUCKETS, math.inf):
                observed.setdefault(float(bound), 0.0)
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


def holder_is_worker_endpoint(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether what answers on ``host:port`` is a posegen worker metrics endpoint (its ``/metrics`` serves
    ``pose_operation_duration_seconds``); False for another program, or none answering within ``timeout`` s."""
    probe_host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    url = f"http://{f'[{probe_host}]' if ':' in probe_host else probe_host}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - a local http URL
            return answer.status == 200 and b"pose_operation_duration_seconds" in answer.read(1 << 20)
    except (OSError, ValueError):
        return False


def worker_registry(redis: Redis, group: str, revision: str, faults: Mapping[str, float]) -> CollectorRegistry:
    """What a worker endpoint serves: ``group``'s operation timings (read from Redis at scrape time), the build
    info, the process collector and the fault drill (``faults``: fraction of poses failed per error type)."""
    registry = CollectorRegistry()
    registry.register(OperationStatsCollector(redis, group))
    registry.register(BuildInfoCollector(revision))
    ProcessCollector(registry=registry)
    gauge("pose_fault_drill_active", registry=registry).set(1 if any(faults.values()) else 0)
    fraction = gauge("pose_fault_drill_fraction", registry=registry)
    for error_type, share in faults.items():
        fraction.labels(error_type).set(share)
    return registry


class WorkerMetricsEndpoint:
    """``http://host:port/metrics`` for every worker of this host reporting to ``port``.

    ``start()`` binds the port, or, when another process holds it, logs one line and retries every
    ``TAKEOVER_INTERVAL_SECONDS`` in a daemon thread. Either way the caller's jobs report to the
    port's hash (:func:`use_metrics_group`), so nothing is lost while another worker serves it.
    """

    def __init__(self, redis: Redis, host: str, port: int, revision: str = "unknown",
                 faults: Mapping[str, float] | None = None) -> None:
        """``faults``: this worker's ``POSEGEN_FAULTS`` (fraction per error type), served as
        ``pose_fault_drill_active`` and ``pose_fault_drill_fraction{error_type}`` so dashboards show a drill."""
        self.host = host
        self._revision = revision
        self._faults = dict(faults or {})
        self.port = port
        self.group = metrics_group(port)
        self._redis = redis
        self._server: WSGIServer | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # A forked child (a work-horse, a pool's worker) must not keep the listening socket open: the port
        # would stay taken, unanswered, after this process exits.
        os.register_at_fork(after_in_child=self._close_in_child)

    @property
    def serving(self) -> bool:
        return self._server is not None

    def start(self) -> bool:
        """Serve now if the port is free (True); otherwise say so once and keep trying in the background.

        A port that cannot be bound for another reason (no permission, an address not of this host) is
        said once too; the worker then runs without an endpoint.
        """
        use_metrics_group(self.group)
        try:
            if self._try_bind():
                return True
        except OSError as exc:
            use_metrics_group(None)
            log.warning(f"Cannot serve metrics on {self.host}:{self.port} ({exc.strerror}); this worker keeps "
                        f"working without a metrics endpoint. Choose one with --metrics-host and --metrics-port "
                        f"(0: none).", metricsPort=self.port)
            return False
        if holder_is_worker_endpoint(self.host, self.port):
            log.warning(
                f"Metrics port {self.port} is in use; this worker keeps working and its timings are served there "
                f"if another posegen worker holds it (workers on one host given the same port share one "
                f"endpoint), and it takes the port over when it frees. Use --metrics-port N for an endpoint of "
                f"its own, or --metrics-port 0 for none.",
                metricsPort=self.port, metricsGroup=self.group,
            )
        else:
            log.error(
                f"Metrics port {self.port} is held by a program that does not answer as a posegen worker "
                f"(not a posegen worker, or one that is stuck): this worker keeps working, but its timings are "
                f"not served until the port frees (it takes it over then). Use --metrics-port N with a free "
                f"port, or --metrics-port 0 for none.",
                metricsPort=self.port, metricsGroup=self.group,
            )
        threading.Thread(target=self._take_over, name="posegen-metrics-takeover", daemon=True).start()
        return False

    def _try_bind(self) -> bool:
        registry = worker_registry(self._redis, self.group, self._revision, self._faults)
        try:
            server, _thread = serve_metrics(self.host, self.port, registry)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return False
        with self._lock:
            self._server = server
        return True

    def _take_over(self) -> None:
        while not self._stop.wait(TAKEOVER_INTERVAL_SECONDS):
            if self._try_bind():
                log.info(f"Took over metrics port {self.port}", metricsPort=self.port, metricsGroup=self.group)
                return

    def _close_in_child(self) -> None:
        # Only the fd: the serving and take-over threads exist in the parent alone.
        if self._server is not None:
            self._server.socket.close()
            self._server = None

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
