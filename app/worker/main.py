"""``posegen worker``: an RQ worker on the ``pose-generation`` queue, plus the reaper thread."""

from __future__ import annotations

import time

import psycopg
from redis.exceptions import ConnectionError as RedisConnectionError

from app.errors import ControlNetError
from app.observability.logging import get_logger
from app.observability.worker_metrics import serve_worker_metrics
from app.providers.skeleton import render_pose_skeleton
from app.settings import Settings
from app.worker.job_failures import CountingWorker
from app.worker.jobs import use_settings
from app.worker.limiter import advertise_limit
from app.worker.queue import make_queue, make_redis
from app.worker.reaper import Reaper

log = get_logger("Worker")


def warm_skeleton_cache(settings: Settings) -> None:
    """Render every library pose's skeleton once here, so forked work-horses start with them cached."""
    try:
        with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
            rows = conn.execute("SELECT keypoints FROM poses").fetchall()
    except psycopg.Error as exc:
        log.warning("Could not warm the skeleton cache", error=str(exc))
        return
    for (keypoints,) in rows:
        try:
            render_pose_skeleton(keypoints, settings.image_size)
        except ControlNetError:
            continue  # a malformed pose fails its own generations with CONTROLNET_ERROR


def run_worker(
    settings: Settings, *, name: str | None = None, burst: bool = False, metrics_host: str = "127.0.0.1",
    metrics_port: int = 0,
) -> None:
    use_settings(settings)
    warm_skeleton_cache(settings)
    redis = make_redis(settings.redis_url)
    # Blocking dequeues wait longer than the fail-fast socket timeout the API uses.
    redis.connection_pool.connection_kwargs["socket_timeout"] = None
    queue = make_queue(redis)
    reaper = Reaper(settings, redis)
    reaper.start()
    started = False
    restarts = 0
    try:
        while True:
            try:
                # After an outage the old registration may still be live in Redis: register under a new name.
                worker_name = f"{name}-r{restarts}" if name and restarts else name
                worker = CountingWorker([queue], connection=redis, name=worker_name)
                if not started:
                    advertise_limit(redis, settings.provider_concurrency)
                    if metrics_port:
                        serve_worker_metrics(redis, worker.name, metrics_host, metrics_port, settings)
                    log.info("Worker starting", queue=queue.name, worker=worker.name, provider=settings.provider,
                             metricsPort=metrics_port or None)
                    started = True
                worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
                return
            except RedisConnectionError as exc:
                # Redis went away: wait for it rather than exit, so a Redis restart needs no worker restart.
                log.error("Redis unreachable; worker waiting to reconnect", error=str(exc))
                restarts += 1
                time.sleep(1.0)
    finally:
        reaper.stop()
