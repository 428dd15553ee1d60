"""``posegen worker --processes N``: N RQ workers under one command, on RQ's own :class:`rq.worker_pool.WorkerPool`.

The pool process forks the workers (after warming the skeleton cache once, so they share it), starts a new
one within a second when one dies, and on SIGTERM/SIGINT asks each for a warm shutdown: a running
generation finishes (or, if the process is killed before it does, its lease lapses and a reaper re-queues
it). The workers report their jobs' timings to the pool's one metrics endpoint
(:mod:`app.observability.worker_metrics`); each runs a reaper, as a plain worker does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
from multiprocessing.process import BaseProcess

from rq.worker_pool import ForkProcess, WorkerData, WorkerPool

from app import QUEUE_NAME
from app.observability.logging import get_logger
from app.settings import Settings
from app.worker.loop import work_until_stopped, worker_redis

log = get_logger("Worker")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def processes_for_cap(provider_cap: int, poses_per_generation: float, pose_concurrency: int) -> int:
    """Worker processes that keep ``provider_cap`` provider calls in flight.

    Each process runs one generation at a time and at most ``min(poses, pose_concurrency)`` of its
    poses at once, so: ``ceil(cap / min(poses per generation, POSEGEN_POSE_CONCURRENCY))``.
    """
    per_process = max(1.0, min(poses_per_generation, float(pose_concurrency)))
    return max(1, -int(-provider_cap // per_process))


def _leave_pool_session(pool_pid: int) -> None:
    """Run this worker in a session of its own, stopped (warmly) if the pool dies without stopping it.

    Linux's autogroup scheduler shares CPU between sessions first: left in the pool's, N workers under
    contention would together get one separately started worker's share. A session of its own also keeps
    the terminal's Ctrl-C from the worker: the pool forwards it once.
    """
    os.setsid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: a SIGKILLed pool leaves its workers working on
        return
    if os.getppid() != pool_pid:  # the pool died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _run_member(settings: Settings, worker_name: str, burst: bool, metrics_port: int, pool_pid: int) -> None:
    # Forked after the pool installed its handlers: the worker installs RQ's own in work().
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _leave_pool_session(pool_pid)
    work_until_stopped(settings, name=worker_name, burst=burst, in_pool=True, metrics_port=metrics_port)


class PoseWorkerPool(WorkerPool):
    """RQ's pool with our worker entry point (reaper, Redis-outage handling, shared metrics group)."""

    def __init__(self, settings: Settings, *, processes: int, name: str | None, metrics_port: int) -> None:
        super().__init__([QUEUE_NAME], connection=worker_redis(settings), num_workers=processes)
        self._settings = settings
        self._prefix = name or socket.gethostname()
        self._metrics_port = metrics_port

    def get_worker_process(self, name: str, burst: bool, _sleep: float = 0,
                           logging_level: str = "INFO") -> BaseProcess:
        return ForkProcess(target=_run_member,
                           args=(self._settings, f"{self._prefix}-{name[:8]}", burst, self._metrics_port, os.getpid()),
                           name=f"posegen worker {name[:8]}")

    def handle_dead_worker(self, worker_data: WorkerData) -> None:
        if self.status != self.Status.STOPPED and not self._burst:
            log.warning("Worker process exited; the pool starts another", pid=worker_data.pid,
                        exitCode=worker_data.process.exitcode)
        super().handle_dead_worker(worker_data)


def run_pool(settings: Settings, *, processes: int, name: str | None, burst: bool, metrics_port: int) -> None:
    """Run ``processes`` workers until SIGTERM/SIGINT (or, with ``burst``, until the queue is empty)."""
    pool = PoseWorkerPool(settings, processes=processes, name=name, metrics_port=metrics_port)
    log.info("Worker pool starting", processes=processes, queue=QUEUE_NAME, metricsPort=metrics_port or None)
    pool.start(burst=burst, logging_level="WARNING")
    log.info("Worker pool stopped", processes=processes)
