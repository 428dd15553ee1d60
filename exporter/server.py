"""``posegen exporter``: serves ``/metrics`` from the collectors on a registry of its own.

Text exposition by default, OpenMetrics when the scraper's ``Accept`` header prefers it
(``app.observability.exposition``). Each scrape reads Redis and PostgreSQL in parallel with about a
second for each, so with either down the scrape still answers 200 within that time, with
``pose_exporter_up{source=...} 0``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import ThreadingWSGIServer
from redis import Redis

from app.bookkeeping import DeltaFolder
from app.connections import redis_client
from app.domain.processing import generation_time_limit_seconds
from app.observability.build_info import BuildInfoCollector
from app.observability.exposition import metrics_wsgi_app
from app.observability.fleet_metrics import FleetMetricsCollector
from app.observability.logging import get_logger
from app.settings import RedisSentinel, Settings
from exporter.collectors import (
    CombinedCollector,
    DomainCollector,
    LimitsCollector,
    ProviderSlotsCollector,
    QueueCollector,
    RedisServerCollector,
    ServerChanges,
    SourcesCollector,
)

log = get_logger("Metrics")

# Per source, per scrape. Prometheus' default scrape timeout is 10 s; this keeps far below it.
SOURCE_TIMEOUT_SECONDS = 1.0


def make_exporter_redis(redis_url: str, timeout_seconds: float = SOURCE_TIMEOUT_SECONDS,
                        sentinel: RedisSentinel | None = None) -> Redis:
    """A client that gives up within the deadline: socket timeouts and no retries (redis-py retries by default);
    through Sentinel with ``sentinel``."""
    return redis_client(redis_url, socket_timeout=timeout_seconds, connect_timeout=timeout_seconds, retries=0,
                        health_check_seconds=0, sentinel=sentinel)


class Exporter:
    """The registry of the exporter and what it holds open (a Redis pool, a PostgreSQL connection)."""

    def __init__(self, settings: Settings, timeout_seconds: float = SOURCE_TIMEOUT_SECONDS) -> None:
        self.redis = make_exporter_redis(settings.redis_url, timeout_seconds, settings.redis_sentinel)
        self.server_changes = ServerChanges()
        self.domain = DomainCollector(settings.database_url, timeout_seconds=timeout_seconds,
                                      changes=self.server_changes)
        redis_state = CombinedCollector(QueueCollector(self.redis),
                                        ProviderSlotsCollector(self.redis, settings.provider_concurrency),
                                        FleetMetricsCollector(self.redis),
                                        RedisServerCollector(self.redis, self.server_changes))
        self.sources = SourcesCollector({"redis": redis_state, "postgres": self.domain},
                                        timeout_seconds=timeout_seconds)
        self.registry = CollectorRegistry()
        self.registry.register(self.sources)
        self.registry.register(BuildInfoCollector(settings.revision))
        self.registry.register(_Families(self.server_changes.families))
        self.registry.register(LimitsCollector(generation_time_limit_seconds(
            settings.flux_deadline_seconds, settings.max_poses_per_generation, settings.pose_concurrency)))
        ProcessCollector(registry=self.registry)

    def close(self) -> None:
        self.sources.close()
        self.domain.close()
        self.redis.close()


class _Families:
    """A collector of the families a callable yields at scrape time."""

    def __init__(self, families: Callable[[], Iterable[Any]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Any]:
        return self._families()


def metrics_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """WSGI app: ``/metrics`` (format negotiated from ``Accept``, 406 when none is acceptable), a pointer at
    ``/``, 404 elsewhere."""
    metrics = metrics_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"posegen exporter: metrics at /metrics\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found; metrics are at /metrics\n"]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the JSON logs."""


def run_exporter(settings: Settings, host: str, port: int) -> None:
    """Serve ``/metrics`` on ``host:port`` until SIGTERM or SIGINT."""
    exporter = Exporter(settings)
    folder = DeltaFolder(settings.database_url)
    folder.start()
    server = make_server(host, port, metrics_app(exporter.registry), ThreadingWSGIServer,
                         handler_class=_QuietHandler)

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever() to return, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("Exporter listening", url=f"http://{host}:{port}/metrics")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        folder.stop()
        exporter.close()
        log.info("Exporter stopped")
