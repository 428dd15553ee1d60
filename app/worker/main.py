"""``posegen worker``: an RQ worker on the ``pose-generation`` queue, plus the reaper thread.

One process runs one generation at a time (its poses concurrently, the loop of :mod:`app.worker.loop`);
``--processes N`` runs N of them under one command (:mod:`app.worker.pool`).
"""

from __future__ import annotations

from rq.exceptions import StopRequested

from app.connections import warm_tls
from app.settings import Settings
from app.worker.jobs import use_settings
from app.worker.loop import install_stop_handlers, log, start_metrics_endpoint, warm_skeleton_cache, work_until_stopped
from app.worker.pool import run_pool


def run_worker(
    settings: Settings, *, name: str | None = None, burst: bool = False, metrics_host: str = "127.0.0.1",
    metrics_port: int = 0, processes: int = 1,
) -> None:
    """``posegen worker``: one worker here, or a pool of ``processes`` with one metrics endpoint. SIGTERM/SIGINT
    while it starts (warming caches, binding the metrics port) stop it too, with exit 0."""
    install_stop_handlers()
    try:
        _run_worker(settings, name=name, burst=burst, metrics_host=metrics_host, metrics_port=metrics_port,
                    processes=processes)
    except StopRequested:
        log.info("Worker stopped on request while starting")


def _run_worker(settings: Settings, *, name: str | None, burst: bool, metrics_host: str, metrics_port: int,
                processes: int) -> None:
    use_settings(settings)
    warm_skeleton_cache(settings)
    warm_tls()
    endpoint = start_metrics_endpoint(settings, metrics_host, metrics_port)
    try:
        if processes > 1:
            run_pool(settings, processes=processes, name=name, burst=burst, metrics_port=metrics_port)
        else:
            work_until_stopped(settings, name=name, burst=burst, metrics_port=metrics_port,
                               serving=bool(endpoint and endpoint.serving))
    finally:
        if endpoint is not None:
            endpoint.stop()
