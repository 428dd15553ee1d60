"""``posegen worker``: an RQ worker on the ``pose-generation`` queue, plus the reaper thread.

One process runs one generation at a time (its poses concurrently); ``--processes N`` runs N of them
under one command (:mod:`app.worker.pool`).
"""

from __future__ import annotations

import time

import psycopg
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.errors import ControlNetError
from app.observability.logging import get_logger
from app.observability.worker_metrics import WorkerMetricsEndpoint, use_metrics_group
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


def worker_redis(settings: Settings) -> Redis:
    redis = make_redis(settings.redis_url)
    # Blocking dequeues wait longer than the fail-fast socket timeout the API uses.
    redis.connection_pool.connection_kwargs["socket_timeout"] = None
    return redis


def start_metrics_endpoint(settings: Settings, host: str, port: int) -> WorkerMetricsEndpoint | None:
    """The host's worker endpoint on ``port`` (served here, or by the worker that holds it); None when 0."""
    if not port:
        use_metrics_group(None)
        return None
    endpoint = WorkerMetricsEndpoint(worker_redis(settings), host, port, settings.revision,
                                     {t.value: share for t, share in settings.faults.items()})
    endpoint.start()
    return endpoint


def work_until_stopped(settings: Settings, *, name: str | None, burst: bool, in_pool: bool = False,
                       metrics_port: int = 0, serving: bool = False) -> None:
    """Run one RQ worker (and this process's reaper) until SIGTERM/SIGINT, or an empty queue with ``burst``.

    A warm shutdown: the running generation finishes first (RQ's second signal within a second is a
    duplicate from the pool and is ignored). Redis outages are waited out under a new worker name.
    """
    redis = worker_redis(settings)
    queue = make_queue(redis)
    reaper = Reaper(settings, redis)
    reaper.start()
    restarts = 0
    advertised = False
    try:
        while True:
            try:
                # After an outage the old registration may still be live in Redis: register under a new name.
                worker_name = f"{name}-r{restarts}" if name and restarts else name
                worker = CountingWorker([queue], connection=redis, name=worker_name)
                if not advertised:
                    advertise_limit(redis, settings.provider_concurrency)
                    advertised = True
                if not restarts:
                    log.info("Worker starting", queue=queue.name, worker=worker.name, provider=settings.provider,
                             metricsPort=metrics_port or None, servingMetrics=serving, inPool=in_pool)
                worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
                return
            except RedisConnectionError as exc:
                # Redis went away: wait for it rather than exit, so a Redis restart needs no worker restart.
                log.error("Redis unreachable; worker waiting to reconnect", error=str(exc))
                restarts += 1
                time.sleep(1.0)
    finally:
        reaper.stop()


def run_worker(
    settings: Settings, *, name: str | None = None, burst: bool = False, metrics_host: str = "127.0.0.1",
    metrics_port: int = 0, processes: int = 1,
) -> None:
    """``posegen worker``: one worker here, or a pool of ``processes`` with one metrics endpoint."""
    use_settings(settings)
    warm_skeleton_cache(settings)
    endpoint = start_metrics_endpoint(settings, metrics_host, metrics_port)
    try:
        if processes > 1:
            from app.worker.pool import run_pool

            run_pool(settings, processes=processes, name=name, burst=burst, metrics_port=metrics_port)
        else:
            work_until_stopped(settings, name=name, burst=burst, metrics_port=metrics_port,
                               serving=bool(endpoint and endpoint.serving))
    finally:
        if endpoint is not None:
            endpoint.stop()
