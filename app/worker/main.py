"""``posegen worker``: an RQ worker on the ``pose-generation`` queue, plus the reaper thread."""

from __future__ import annotations

from rq import Worker

from app.observability.logging import get_logger
from app.observability.worker_metrics import serve_worker_metrics
from app.settings import Settings
from app.worker.jobs import use_settings
from app.worker.queue import make_queue, make_redis
from app.worker.reaper import Reaper

log = get_logger("Worker")


def run_worker(
    settings: Settings, *, name: str | None = None, burst: bool = False, metrics_host: str = "127.0.0.1",
    metrics_port: int = 0,
) -> None:
    use_settings(settings)
    redis = make_redis(settings.redis_url)
    # Blocking dequeues wait longer than the fail-fast socket timeout the API uses.
    redis.connection_pool.connection_kwargs["socket_timeout"] = None
    queue = make_queue(redis)
    reaper = Reaper(settings, redis)
    reaper.start()
    worker = Worker([queue], connection=redis, name=name)
    if metrics_port:
        serve_worker_metrics(redis, worker.name, metrics_host, metrics_port)
    log.info("Worker starting", queue=queue.name, worker=worker.name, provider=settings.provider,
             metricsPort=metrics_port or None)
    try:
        worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
    finally:
        reaper.stop()
