"""Collectors of the standalone exporter, each reading its source at scrape time.

What each metric means, its labels and where its number comes from: :mod:`app.metric_catalogue` (the docs'
metrics reference is rendered from it); every family here is built from its declaration there.

:class:`QueueCollector` reads the ``pose-generation`` RQ queue from Redis in two pipelined round trips
(``LLEN``/``ZCARD``/``LINDEX`` and the queue's worker set, then each worker's ``state`` and the head job's
``enqueued_at``): whatever the queue length, the cost is the same. :class:`ProviderSlotsCollector` reads the
provider-slot limiter's state and :class:`~app.observability.fleet_metrics.FleetMetricsCollector` the fleet's
counters and histograms kept in Redis; the ``redis`` source reads all three (:class:`CombinedCollector`).

:class:`DomainCollector` reads counters that PostgreSQL triggers keep in the same transactions as the writes they
count (:mod:`app.bookkeeping`): exact, surviving any process exiting, and a scrape sums the totals and the few
deltas not folded yet, whatever the size of the history. Histogram buckets carry an exemplar (trace id,
generation id) of their latest traced observation.

:class:`SourcesCollector` reads every source in parallel, each within its deadline, so one source failing or
hanging never breaks the scrape; it adds ``pose_exporter_up{source}`` and
``pose_exporter_scrape_duration_seconds{source}``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import psycopg
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString
from redis import Redis

from app import QUEUE_NAME
from app.bookkeeping import SCRAPE_FOLD, fold
from app.connections import pg_connect, redis_server_address
from app.domain.audit import Action
from app.domain.intake import read_intake_pause, workers_paused
from app.domain.processing import AbandonReason
from app.errors import ErrorType
from app.metric_catalogue import counter_family, gauge_family, histogram_family
from app.observability.logging import get_logger
from app.queue import WORKER_STATES, QueueKeys, read_queue_counts
from app.worker.limiter import read_slot_usage

log = get_logger("Metrics")


class QueueCollector(Collector):
    """The RQ queue and its live workers, from Redis (:func:`app.queue.read_queue_counts`)."""

    def __init__(self, redis: Redis, queue_name: str = QUEUE_NAME) -> None:
        self._redis = redis
        self._keys = QueueKeys.of(redis, queue_name)

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        counts = read_queue_counts(self._redis, self._keys, with_workers=True, now=now)
        jobs = {"waiting": counts.waiting, "active": counts.active, "scheduled": counts.scheduled,
                "deferred": counts.deferred, "failed": counts.failed, "finished": counts.completed}
        states = gauge_family("pose_queue_jobs")
        for state, count in jobs.items():
            states.add_metric([state], count)
        yield states
        yield gauge_family("pose_queue_depth", counts.depth)
        workers = gauge_family("pose_workers")
        for state in WORKER_STATES:
            workers.add_metric([state], counts.workers.get(state, 0))
        yield workers
        enqueued_at = counts.oldest_waiting_enqueued_at
        age = max(0.0, now - enqueued_at) if enqueued_at is not None else 0.0
        yield gauge_family("pose_queue_oldest_waiting_job_age_seconds", age)
        yield from planned_pause_families(self._redis)


class ProviderSlotsCollector(Collector):
    """The provider-slot limiter's state in Redis: slots held under a live lease, and the cap.

    The cap is the one the most recently started worker advertised; before any did, the exporter's own
    ``POSEGEN_PROVIDER_CONCURRENCY``.
    """

    def __init__(self, redis: Redis, default_limit: int) -> None:
        self._redis = redis
        self._default_limit = default_limit

    def collect(self) -> Iterator[Metric]:
        in_use, limit = read_slot_usage(self._redis)
        yield gauge_family("pose_provider_slots_in_use", in_use)
        yield gauge_family("pose_provider_slots_limit", limit if limit is not None else self._default_limit)


class ServerChanges:
    """The server each source was last read from, and how often that changed (a failover, a switchover)."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}
        self._changes: dict[str, int] = {"redis": 0, "postgres": 0}
        self._lock = threading.Lock()

    def note(self, source: str, address: str | None) -> None:
        """Record that ``source`` was read from ``address`` (``host:port``; None: not known yet)."""
        if address is None:
            return
        with self._lock:
            last = self._last.get(source)
            if last is not None and last != address:
                self._changes[source] += 1
                log.warning("Exporter source moved to another server", source=source, previous=last, address=address)
            self._last[source] = address

    def families(self) -> Iterator[Metric]:
        """``pose_exporter_server_changes_total{source}``, read outside the sources (it survives an outage)."""
        changes = counter_family("pose_exporter_server_changes_total")
        with self._lock:
            for source, count in self._changes.items():
                changes.add_metric([source], count)
        yield changes


class RedisServerCollector(Collector):
    """The Redis server the exporter's client reads (with Sentinel: the master last named), read after the
    source's other collectors have used the client."""

    def __init__(self, redis: Redis, changes: ServerChanges) -> None:
        self._redis = redis
        self._changes = changes

    def collect(self) -> Iterator[Metric]:
        address = redis_server_address(self._redis)
        self._changes.note("redis", address)
        if address is not None:
            yield redis_server_family(address)


def redis_server_family(address: str) -> Metric:
    """``pose_redis_server_info{address} 1`` for the Redis server at ``address`` (``host:port``)."""
    info = gauge_family("pose_redis_server_info")
    info.add_metric([address], 1)
    return info


def database_server_family(address: str) -> Metric:
    """``pose_database_server_info{address} 1`` for the PostgreSQL server at ``address`` (``host:port``)."""
    info = gauge_family("pose_database_server_info")
    info.add_metric([address], 1)
    return info


class CombinedCollector(Collector):
    """Several collectors read as one source (one ``pose_exporter_up{source}``)."""

    def __init__(self, *parts: Collector) -> None:
        self._parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self._parts:
            yield from part.collect()


class LimitsCollector(Collector):
    """Figures the exporter knows from its configuration (the same settings the workers run with)."""

    def __init__(self, generation_time_limit_seconds: float) -> None:
        self._generation_limit = generation_time_limit_seconds

    def collect(self) -> Iterator[Metric]:
        yield gauge_family("pose_generation_time_limit_seconds", self._generation_limit)


def planned_pause_families(redis: Redis) -> Iterator[Metric]:
    """The operators' planned pauses (``posegen ops pause``): alerts that fire because nothing is created
    or finished stay quiet while one is on (see alerts/rules)."""
    yield gauge_family("pose_intake_paused", int(read_intake_pause(redis) is not None))
    yield gauge_family("pose_workers_paused", int(workers_paused(redis)))


# The histograms of the bookkeeping: their key in metrics_histogram_totals -> the metric.
_HISTOGRAMS = {
    "generation_duration": "pose_generation_duration_seconds",
    "provider_call": "pose_provider_call_duration_seconds",
    "upload": "pose_upload_duration_seconds",
    "queue_wait": "pose_queue_wait_duration_seconds",
    "pose_duration": "pose_pose_duration_seconds",
}

# One statement, so counters and histograms come from the same snapshot: the folded totals plus the
# deltas not folded yet, as figures (view metrics_exporter_pending, app/bookkeeping.py), errors and credits from
# the admin metrics' own tables of the same family. Columns: metric, label, le, value, sum_ms, then a
# bucket's exemplar (trace_id, generation_id, value_ms, observed_at epoch seconds).
_READ_SQL = """
WITH figures (metric, label, value) AS (
    SELECT metric, label, value FROM metrics_exporter_totals
    UNION ALL
    SELECT metric, label, value FROM metrics_exporter_pending
    UNION ALL
    SELECT 'errors', error_type, events FROM metrics_error_totals
    UNION ALL
    SELECT 'errors', error_type, events FROM metrics_error_deltas
    UNION ALL
    SELECT e.metric, '', e.value
      FROM (SELECT charged, refunded FROM metrics_credit_hourly
            UNION ALL SELECT charged, refunded FROM metrics_credit_deltas) c
     CROSS JOIN LATERAL (VALUES ('credits_spent', c.charged), ('credits_refunded', c.refunded)) AS e (metric, value)
), observed (metric, le, count, sum_ms) AS (
    SELECT metric, le, count, sum_ms FROM metrics_histogram_totals
    UNION ALL
    SELECT metric, le, count, sum_ms FROM metrics_histogram_deltas
)
SELECT metric, label, NULL::float8 AS le,
       (CASE metric WHEN 'last_finished_generation_ms' THEN max(value) ELSE sum(value) END)::bigint AS value,
       NULL::bigint AS sum_ms, NULL::text AS trace_id, NULL::text AS generation_id, NULL::bigint AS value_ms,
       NULL::float8 AS observed_at
  FROM figures WHERE value IS NOT NULL GROUP BY metric, label
UNION ALL
SELECT 'oldest_running_ms', '', NULL,
       coalesce((extract(epoch FROM now() - min(attempt_started_at)) * 1000)::bigint, 0), NULL, NULL, NULL, NULL, NULL
  FROM generations WHERE status = 'processing'
UNION ALL
SELECT b.metric, '', bucket.le, coalesce(sum(o.count), 0)::bigint, coalesce(sum(o.sum_ms), 0)::bigint,
       min(e.trace_id), min(e.generation_id), min(e.value_ms), extract(epoch FROM min(e.observed_at))::float8
  FROM exporter_histogram_bounds b
 CROSS JOIN LATERAL unnest(b.bounds || 'Infinity'::float8) AS bucket (le)
  LEFT JOIN observed o ON o.metric = b.metric AND o.le = bucket.le
  LEFT JOIN exporter_histogram_exemplars e ON e.metric = b.metric AND e.le = bucket.le
 GROUP BY b.metric, bucket.le
UNION ALL
SELECT 'in_recovery', '', NULL, pg_is_in_recovery()::int, NULL, NULL, NULL, NULL, NULL
UNION ALL
SELECT 'operator_actions', action, NULL, count(*), NULL, NULL, NULL, NULL, NULL FROM operator_audit GROUP BY action
UNION ALL
SELECT 'users_failed_1h', '', NULL, count(DISTINCT user_id), NULL, NULL, NULL, NULL, NULL
  FROM generations WHERE status = 'failed' AND finished_at > now() - interval '1 hour'
"""

# A read this many deadlines old is stuck (statement_timeout ends a slow one at 0.8 deadlines).
STUCK_READ_FACTOR = 3


class SourceBusy(RuntimeError):
    """A previous read of the source has not returned yet."""


class DomainCollector(Collector):
    """Generation, pose, error and credit counters from PostgreSQL, over one persistent connection.

    The connection is opened on the first scrape and reopened when it breaks (a restarted server, a
    terminated backend): a broken connection is retried once at once, so a scrape only fails while
    the database really cannot be reached. Statements time out on the server before the deadline.
    """

    def __init__(self, database_url: str, *, timeout_seconds: float = 1.0,
                 changes: ServerChanges | None = None) -> None:
        self._database_url = database_url
        self._timeout = timeout_seconds
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._changes = changes or ServerChanges()

    def collect(self) -> Iterator[Metric]:
        if not self._lock.acquire(timeout=self._timeout):
            raise SourceBusy("a previous read of PostgreSQL is still running")
        try:
            rows = self._read()
            assert self._conn is not None
            # libpq's host and port of this connection: with a multi-host DATABASE_URL, the server it chose.
            address = f"{self._conn.info.host}:{self._conn.info.port}"
        finally:
            self._lock.release()
        self._changes.note("postgres", address)
        yield database_server_family(address)
        yield from _domain_families(rows)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _read(self) -> list[tuple[Any, ...]]:
        reused = self._conn is not None
        if self._conn is None:
            self._conn = self._connect()
        try:
            return self._execute(self._conn, fold=True)
        except psycopg.OperationalError:
            if not (self._conn.broken or self._conn.closed):
                raise  # e.g. the statement timed out: the connection itself is fine
            self._conn.close()
            self._conn = None
            if not reused:
                raise
        self._conn = self._connect()
        return self._execute(self._conn)

    def _execute(self, conn: psycopg.Connection[Any], *, fold: bool = False) -> list[tuple[Any, ...]]:
        """The read, on a watchdog: a server that stops answering without closing (a hung proxy, a dropped
        route the kernel has not noticed yet) would leave this thread, and every later scrape, waiting for
        ever. Past STUCK_READ_FACTOR deadlines the socket is shut down, which fails the read at once."""
        watchdog = threading.Timer(self._timeout * STUCK_READ_FACTOR, _shut_down_socket, (conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            if fold:
                self._fold()
            return conn.execute(_READ_SQL).fetchall()
        finally:
            watchdog.cancel()

    def _fold(self) -> None:
        """Fold a bounded batch of deltas first, as the admin readers and the workers' timer do, so a
        burst of writes not folded yet (a bulk load, a deployment without workers) does not slow every
        scrape; a busy or failing fold is skipped (the read adds unfolded deltas anyway, and stays exact)."""
        assert self._conn is not None
        try:
            fold(self._conn, SCRAPE_FOLD.rows)
        except psycopg.Error:
            if self._conn.broken or self._conn.closed:
                raise

    def _connect(self) -> psycopg.Connection[Any]:
        # libpq waits at least 2 s to connect; SourcesCollector's deadline bounds the scrape anyway.
        conn = pg_connect(self._database_url, autocommit=True, connect_timeout=2,
                          tcp_user_timeout_ms=int(self._timeout * 1000), application_name="posegen-exporter")
        statement_ms = int(self._timeout * 800)
        conn.execute("SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
                     (str(statement_ms), str(statement_ms // 2)))
        return conn


def _shut_down_socket(conn: psycopg.Connection[Any]) -> None:
    # shutdown(2) acts on the socket itself, so it wakes libpq's wait on its own descriptor.
    with contextlib.suppress(OSError, psycopg.Error):
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)


def _domain_families(rows: Iterable[tuple[Any, ...]]) -> Iterator[Metric]:
    counters: dict[tuple[str, str], int] = {}
    buckets: dict[str, list[tuple[float, int, int, Exemplar | None]]] = {}
    for metric, label, le, value, sum_ms, trace_id, generation_id, value_ms, observed_at in rows:
        if le is None:
            counters[(metric, label)] = int(value)
        else:
            exemplar = None
            if trace_id is not None:
                labels = {"trace_id": trace_id, **({"generation_id": generation_id} if generation_id else {})}
                exemplar = Exemplar(labels, value_ms / 1000, observed_at)
            buckets.setdefault(metric, []).append((float(le), int(value), int(sum_ms), exemplar))

    def count(metric: str, label: str = "") -> int:
        return counters.get((metric, label), 0)

    generations = counter_family("pose_generations_total")
    for status in ("created", "completed", "failed"):
        generations.add_metric([status], count("generations", status))
    yield generations
    in_progress = gauge_family("pose_generations_in_progress")
    for status in ("queued", "processing"):
        in_progress.add_metric([status], count("generations_in_progress", status))
    yield in_progress
    poses = counter_family("pose_poses_total")
    for status in ("completed", "failed"):
        poses.add_metric([status], count("poses", status))
    yield poses
    yield gauge_family("pose_poses_pending", count("poses_pending"))
    errors = counter_family("pose_errors_total")
    seen = {label for metric, label in counters if metric == "errors"}
    for error_type in [*(e.value for e in ErrorType), *sorted(seen - {e.value for e in ErrorType})]:
        errors.add_metric([error_type], count("errors", error_type))
    yield errors
    yield counter_family("pose_credits_spent_total", count("credits_spent"))
    yield counter_family("pose_credits_refunded_total", count("credits_refunded"))
    requeues = counter_family("pose_generation_requeues_total")
    exhausted = counter_family("pose_generation_attempts_exhausted_total")
    for reason in AbandonReason:
        requeues.add_metric([reason.value], count("generation_requeues", reason.value))
        exhausted.add_metric([reason.value], count("generation_attempts_exhausted", reason.value))
    yield requeues
    yield exhausted
    yield gauge_family("pose_generation_oldest_running_age_seconds", count("oldest_running_ms") / 1000)
    # The blast radius a page names: distinct users whose generation failed within the hour before the
    # scrape (index generations_failed_finished), not a counter, so it goes down as failures age out.
    yield gauge_family("pose_users_with_failed_generations", count("users_failed_1h"))
    # Rows of the append-only audit table: exact, and they never go down.
    actions = counter_family("pose_operator_actions_total")
    for action in Action:
        actions.add_metric([action.value], count("operator_actions", action.value))
    yield actions
    yield gauge_family("pose_database_in_recovery", count("in_recovery"))
    if ("last_finished_generation_ms", "") in counters:
        yield gauge_family("pose_last_finished_generation_timestamp_seconds",
                           count("last_finished_generation_ms") / 1000)
    for key, name in _HISTOGRAMS.items():
        observed = sorted(buckets.get(key, []), key=lambda bucket: bucket[0])
        if not observed:
            continue
        cumulative, total_ms = 0, 0
        samples: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
        for le, bucket_count, sum_ms, exemplar in observed:
            cumulative += bucket_count
            total_ms += sum_ms
            bound = floatToGoString(le)
            samples.append((bound, cumulative) if exemplar is None else (bound, cumulative, exemplar))
        family = histogram_family(name)
        family.add_metric([], samples, total_ms / 1000)
        yield family


@dataclass(frozen=True)
class _Reading:
    families: list[Metric]
    seconds: float
    error: BaseException | None


def _read_source(source: Collector) -> _Reading:
    started = time.perf_counter()
    try:
        families = list(source.collect())
    except Exception as exc:  # any failure of a source only makes that source "down"
        return _Reading([], time.perf_counter() - started, exc)
    return _Reading(families, time.perf_counter() - started, None)


class SourcesCollector(Collector):
    """Reads named sources in parallel, each within ``timeout_seconds``; reports up and duration per source."""

    def __init__(self, sources: Mapping[str, Collector], *, timeout_seconds: float = 1.0) -> None:
        self._sources = dict(sources)
        self._timeout = timeout_seconds
        self._pool = ThreadPoolExecutor(max_workers=4 * len(self._sources), thread_name_prefix="exporter-source")
        self._was_up: dict[str, bool] = {}

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        pending = {name: self._pool.submit(_read_source, source) for name, source in self._sources.items()}
        up = gauge_family("pose_exporter_up")
        duration = gauge_family("pose_exporter_scrape_duration_seconds")
        for name, future in pending.items():
            try:
                reading = future.result(timeout=max(0.0, self._timeout - (time.perf_counter() - started)))
            except FutureTimeout:
                reading = _Reading([], time.perf_counter() - started,
                                   TimeoutError(f"no answer within {self._timeout:g} s"))
            yield from reading.families
            up.add_metric([name], 0 if reading.error else 1)
            duration.add_metric([name], reading.seconds)
            self._note(name, reading.error)
        yield up
        yield duration

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _note(self, name: str, error: BaseException | None) -> None:
        """Log when a source goes down or comes back, not on every scrape."""
        was_up = self._was_up.get(name, True)
        self._was_up[name] = error is None
        if error is not None and was_up:
            log.error("Exporter source unavailable", source=name, error=f"{type(error).__name__}: {error}")
        elif error is None and not was_up:
            log.info("Exporter source available again", source=name)
