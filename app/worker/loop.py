"""The worker loop: an RQ worker on the ``pose-generation`` queue, plus the reaper thread, until stopped.

One process runs one generation at a time (its poses concurrently). Its entry point, ``posegen worker``, is
:mod:`app.worker.main`, which runs this loop here or in each member of a pool (:mod:`app.worker.pool`); this
module imports neither.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import psycopg
from redis import Redis
from redis.backoff import NoBackoff
from redis.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool
from rq.exceptions import StopRequested
from rq.job import Job

from app.connections import pg_connect, redis_client
from app.domain.processing import GENERATION_SLACK_SECONDS, generation_time_limit_seconds
from app.errors import ControlNetError
from app.observability.logging import get_logger
from app.observability.worker_metrics import WorkerMetricsEndpoint, use_metrics_group
from app.providers.skeleton import render_pose_skeleton
from app.queue import (
    GENERATION_JOB,
    JOB_MONITORING_INTERVAL_SECONDS,
    WORKER_TTL_SECONDS,
    make_queue,
    make_retry_queue,
)
from app.settings import Settings
from app.worker.job_failures import CountingWorker
from app.worker.limiter import advertise_limit
from app.worker.reaper import Reaper

log = get_logger("Worker")

# How often an idle worker looks at RQ's suspension flag (``posegen ops pause --scope workers``, ``rq suspend``).
SUSPENSION_CHECK_SECONDS = 1
# How long a worker leaving on request waits for Redis to take its unregistration.
STOP_REDIS_TIMEOUT_SECONDS = 2.0
# How long a scrape of the worker's /metrics waits for Redis (its timing hashes) before answering without them.
METRICS_REDIS_TIMEOUT_SECONDS = 1.0

# How long past its last heartbeat a running execution stays in RQ's started registry. RQ adds 60 s to
# the monitoring interval; half a minute is margin enough for a heartbeat every 10 s, and a
# SIGKILLed execution then stops counting as active 40 s after its last heartbeat.
EXECUTION_HEARTBEAT_MARGIN_SECONDS = 30


class PoseWorker(CountingWorker):
    """RQ's worker (counting failed jobs) with heartbeats short enough that its death shows within a minute,
    honouring a suspension while idle too.

    ``worker_ttl`` sets the socket timeout RQ gives the connection (``worker_ttl - 15 + 10`` s): a Redis that
    goes silent mid-``BLMOVE`` is noticed in 25 s. An idle worker dequeues in slices of a second (checking
    RQ's suspension between them: a drain stops idle workers within a second) and heartbeats with each, so
    :data:`app.queue.WORKER_STALE_SECONDS` tells a dead worker from a live one."""

    def __init__(self, *args: Any, database_url: str | None = None, attempt_limit_seconds: float = 0.0,
                 **kwargs: Any) -> None:
        kwargs.setdefault("worker_ttl", WORKER_TTL_SECONDS)
        kwargs.setdefault("job_monitoring_interval", JOB_MONITORING_INTERVAL_SECONDS)
        super().__init__(*args, **kwargs)
        self.database_url = database_url
        self.attempt_limit_seconds = attempt_limit_seconds

    def job_timeout_for(self, timeout: float | None) -> int | None:
        """The timeout (s) this worker runs a job with: the job's own (``None``/-1: none), raised to at least
        the longest attempt the settings allow (:func:`generation_time_limit_seconds`) plus its slack. A job
        enqueued with :data:`app.queue.JOB_TIMEOUT_SECONDS` (3600) would otherwise have its work-horse killed
        mid-attempt -- also during a warm shutdown, which waits for the horse -- when the settings make an
        attempt longer (e.g. 10 poses one at a time: 10 x 360 + 60 = 3660 s), and the re-run pays the
        provider again."""
        if timeout is None or timeout < 0 or not self.attempt_limit_seconds:
            return None if timeout is None else int(timeout)
        return int(max(timeout, -(-(self.attempt_limit_seconds + GENERATION_SLACK_SECONDS) // 1)))

    def execute_job(self, job: Job, queue: Any) -> Any:
        # Before the fork: the horse's death penalty and the parent's heartbeats both read job.timeout.
        job.timeout = self.job_timeout_for(job.timeout)
        return super().execute_job(job, queue)

    #: Set by SIGTERM/SIGINT (or a pool's stop request). RQ's own ``_stop_requested`` stays False when the
    #: signal comes while the worker is idle (it raises StopRequested instead), so the caller cannot tell
    #: a requested stop from a loop that ended on a Redis timeout by that flag alone.
    stop_signalled = False

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.stop_signalled = True
        super().request_stop(signum, frame)

    def register_death(self) -> None:
        """RQ's unregistration, bounded when leaving on request: the worker's client waits out blocking
        dequeues (a 25 s read timeout, retried), so a Redis gone silent would hold a stopping worker for
        minutes. A short-lived client with :data:`STOP_REDIS_TIMEOUT_SECONDS` and no retries does it instead;
        if Redis does not answer, the registration lapses with its TTL."""
        if not self.stop_signalled:
            super().register_death()
            return
        pool = self.connection.connection_pool
        kwargs = {**pool.connection_kwargs, "socket_timeout": STOP_REDIS_TIMEOUT_SECONDS,
                  "socket_connect_timeout": STOP_REDIS_TIMEOUT_SECONDS, "retry": Retry(NoBackoff(), 0),
                  "retry_on_timeout": False, "health_check_interval": 0}
        kwargs.pop("connection_pool", None)  # a Sentinel pool's own link to its connections, set anew below
        if isinstance(pool, SentinelConnectionPool):  # the master the sentinels name, as the lasting client
            short_pool: ConnectionPool = SentinelConnectionPool(pool.service_name, pool.sentinel_manager,
                                                                connection_class=pool.connection_class, **kwargs)
        else:
            short_pool = type(pool)(connection_class=pool.connection_class, **kwargs)
        short = Redis(connection_pool=short_pool)
        lasting, self.connection = self.connection, short
        try:
            super().register_death()
        finally:
            self.connection = lasting
            short.close()

    def teardown(self) -> None:
        """RQ's teardown (unregister, then unsubscribe). When the unregistration fails (Redis gone or silent),
        RQ skips the unsubscription, which left this worker's pub/sub listener retrying in the background for
        the life of the process, beside the listener of the worker that replaces it. Its thread is told to stop
        then, without waiting on it (the stop stays bounded): its read ends with the connection's error or
        timeout, its loop sees the flag, and it closes its connection."""
        try:
            super().teardown()
        except BaseException:
            thread = self.pubsub_thread
            if thread is not None:
                thread.stop(timeout=0)
                self.pubsub_thread = None
            raise

    def unsubscribe(self) -> None:
        """RQ's unsubscription, bounded: RQ sends UNSUBSCRIBE and then stops the pub/sub thread, whose
        ``stop()`` (redis-py 8) joins it without a timeout. When the UNSUBSCRIBE reply wakes the thread before
        its running flag is cleared, it goes back to a 60 s ``get_message`` and the stopping worker waits
        that long. Clearing the flag first (``stop(timeout=0)``) makes the reply end the thread's loop; the
        join is bounded by :data:`STOP_REDIS_TIMEOUT_SECONDS` (the thread is a daemon: a silent Redis
        cannot hold the process either)."""
        thread, pubsub = self.pubsub_thread, self.pubsub
        if thread is None or pubsub is None:
            return
        thread.stop(timeout=0)
        try:
            pubsub.unsubscribe()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("Could not unsubscribe from the worker's command channel", error=str(exc))
        thread.join(timeout=STOP_REDIS_TIMEOUT_SECONDS)
        if not thread.is_alive():
            pubsub.close()  # else the thread closes it when its read ends
        self.pubsub_thread = None

    def maintain_heartbeats(self, job: Job, execution: Any) -> None:
        """RQ's heartbeat of a running job (every ``job_monitoring_interval``), unless the work-horse's attempt
        is fenced: the reaper re-queued its generation under a later attempt because the horse stopped
        renewing the lease (stopped, hung, cut off from the database). Such a horse can no longer write
        anything (every write checks the attempt), yet RQ would keep its job alive and this worker busy until
        the job timeout, with the new attempt waiting behind it. It is killed instead."""
        superseded_by = attempt_superseded(self.database_url, job)
        if superseded_by is not None:
            log.error("Work-horse's attempt was re-queued after its lease lapsed; stopping the work-horse",
                      jobId=job.id, attempt=job.args[1], currentAttempt=superseded_by)
            self.kill_horse()
            return
        super().maintain_heartbeats(job, execution)

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        """RQ's wait for the work-horse, plus one line with the finished horse's peak memory (the most resident
        memory it held, by the kernel's account), so a job that took far more memory than its peers shows."""
        pid, status, rusage = super().wait_for_horse()
        if pid and rusage is not None:
            log.info("Work-horse finished", horsePid=pid, jobId=self.get_current_job_id(),
                     peakMemoryMb=round(rusage.ru_maxrss / 1024, 1))  # Linux counts ru_maxrss in KiB
        return pid, status, rusage

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Seconds until this execution's started-registry entry expires without a new heartbeat."""
        remaining = (job.timeout - working_time) if job.timeout and job.timeout > 0 else self.job_monitoring_interval
        return int(min(remaining, self.job_monitoring_interval)) + EXECUTION_HEARTBEAT_MARGIN_SECONDS

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        if timeout is None or max_idle_time is not None:  # burst mode, or an idle limit of the caller's own
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        while True:
            result = super().dequeue_job_and_maintain_ttl(SUSPENSION_CHECK_SECONDS, SUSPENSION_CHECK_SECONDS)
            if result is not None:
                return result
            self.check_for_suspension(burst=False)
            if self._stop_requested:
                raise StopRequested


def attempt_superseded(database_url: str | None, job: Job) -> int | None:
    """The generation's current attempt when it is later than the one ``job`` runs (the job's attempt is
    fenced); None when the job still owns its attempt, is not a generation job, or the database does not
    answer within a few seconds (a horse is never stopped on a guess)."""
    if database_url is None or job.func_name != GENERATION_JOB or len(job.args) != 2:
        return None
    generation_id, attempt = job.args
    try:
        with pg_connect(database_url, autocommit=True, connect_timeout=3) as conn:
            row = conn.execute("SELECT attempt FROM generations WHERE id = %s", (generation_id,)).fetchone()
    except psycopg.Error as exc:
        log.warning("Could not check the running attempt's lease", jobId=job.id, error=str(exc))
        return None
    return int(row[0]) if row is not None and int(row[0]) > int(attempt) else None


def warm_skeleton_cache(settings: Settings) -> None:
    """Render every library pose's skeleton once here, so forked work-horses start with them cached."""
    try:
        with pg_connect(settings.database_url) as conn:
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
    # Blocking dequeues wait longer than the fail-fast socket timeout the API uses: PoseWorker sets it
    # just above its dequeue timeout (RQ does so for any timeout below that).
    return redis_client(settings.redis_url, socket_timeout=None, sentinel=settings.redis_sentinel)


def metrics_redis(settings: Settings) -> Redis:
    """The worker endpoint's client for the timing hashes: failing within a second, no retries, and through
    Sentinel like every other client (with ``REDIS_SENTINELS``, ``REDIS_URL``'s host is not the master)."""
    return redis_client(settings.redis_url, socket_timeout=METRICS_REDIS_TIMEOUT_SECONDS,
                        connect_timeout=METRICS_REDIS_TIMEOUT_SECONDS, retries=0, sentinel=settings.redis_sentinel)


def start_metrics_endpoint(settings: Settings, host: str, port: int) -> WorkerMetricsEndpoint | None:
    """The host's worker endpoint on ``port`` (served here, or by the worker that holds it); None when 0."""
    if not port:
        use_metrics_group(None)
        return None
    # Its own client, failing within a second and without retries: the pod's liveness probe reads this endpoint,
    # and the worker's client (no read timeout, for blocking dequeues) would hang every scrape on a silent Redis
    # until the probe failed and the pod, with the generations it runs, was restarted.
    scrape_redis = metrics_redis(settings)
    endpoint = WorkerMetricsEndpoint(scrape_redis, host, port, settings.revision,
                                     {t.value: share for t, share in settings.faults.items()})
    endpoint.start()
    return endpoint


RESTART_PAUSE_SECONDS = 1.0


def _stop_was_requested(worker: PoseWorker | None) -> bool:
    return worker is not None and (worker.stop_signalled or worker._stop_requested)


def _stop_on_signal(signum: int, frame: Any) -> None:
    raise StopRequested


def install_stop_handlers() -> None:
    """SIGTERM/SIGINT stop this process wherever it is outside RQ's loop (starting, registering on a silent
    Redis, pausing between restarts): the handler raises :class:`StopRequested`, which ends a blocking call too,
    and the caller returns. Python's default for SIGTERM would kill the process (exit -15) instead, and RQ's
    handlers left from an ended ``work()`` would call into a worker whose loop is over. ``work()`` installs
    RQ's own for its loop."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_on_signal)


def work_until_stopped(settings: Settings, *, name: str | None, burst: bool, in_pool: bool = False,
                       metrics_port: int = 0, serving: bool = False) -> None:
    """Run one RQ worker (and this process's reaper) until SIGTERM/SIGINT, or an empty queue with ``burst``.

    A warm shutdown: the running generation finishes first (RQ's second signal within a second is a
    duplicate from the pool and is ignored). Redis outages are waited out under a new worker name.
    """
    redis = worker_redis(settings)
    queue = make_queue(redis)
    # The reaper's own client keeps the fail-fast timeouts (the worker's waits out its blocking dequeue).
    reaper = Reaper(settings, redis_client(settings.redis_url, sentinel=settings.redis_sentinel))
    reaper.start()
    restarts = 0
    advertised = False
    worker: PoseWorker | None = None
    try:
        while True:
            try:
                install_stop_handlers()
                # After an outage the old registration may still be live in Redis: register under a new name.
                worker_name = f"{name}-r{restarts}" if name and restarts else name
                # Queue order is priority: retries run only while no new generation waits.
                worker = PoseWorker([queue, make_retry_queue(redis)], connection=redis, name=worker_name,
                                    database_url=settings.database_url,
                                    attempt_limit_seconds=generation_time_limit_seconds(
                                        settings.flux_deadline_seconds, settings.max_poses_per_generation,
                                        settings.pose_concurrency))
                if not advertised:
                    advertise_limit(redis, settings.provider_concurrency)
                    advertised = True
                if not restarts:
                    log.info("Worker starting", queue=queue.name, worker=worker.name, provider=settings.provider,
                             metricsPort=metrics_port or None, servingMetrics=serving, inPool=in_pool)
                worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
                if burst or _stop_was_requested(worker):
                    return
                # RQ ends its loop on a Redis timeout outside the dequeue (a heartbeat on a connection that
                # went silent): this process is fine, so it registers again on a fresh connection.
                log.error("Worker loop ended without a stop request; restarting it", worker=worker.name)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if _stop_was_requested(worker):  # asked to stop while Redis was away: nothing left to unregister
                    log.warning("Worker stopping without Redis", error=str(exc))
                    return
                # Redis went away: wait for it rather than exit, so a Redis restart needs no worker restart.
                log.error("Redis unreachable; worker waiting to reconnect", error=str(exc))
            except StopRequested:  # a signal while registering, before RQ's loop caught it
                return
            restarts += 1
            try:
                install_stop_handlers()
                time.sleep(RESTART_PAUSE_SECONDS)
            except StopRequested:
                return
    finally:
        reaper.stop()
