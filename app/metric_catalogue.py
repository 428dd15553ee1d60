"""The metric catalogue: every metric the service exposes, declared once (name, type, labels, help, who exposes
it, where its number comes from).

Everything else derives from this table: the API's, workers' and canary's prometheus-client objects
(:func:`counter`, :func:`gauge`, :func:`histogram`), the exporter's scrape-time families (:func:`counter_family`,
:func:`gauge_family`, :func:`histogram_family`), the docs' metrics reference (:func:`render_metrics_table`) and
the tests' contract (:func:`contract_series`). A name that is not declared here cannot be built.

Names are the ones PromQL selects: a counter's ends in ``_total``; a histogram's series add ``_bucket``, ``_sum``
and ``_count``. Label *values* stay with the code that owns them (a label's closed set lives beside its events).
Besides these, every process serves prometheus-client's standard ``process_*`` collector (the API's Python
``python_gc_*``/``python_info`` too), which are not ours to declare.

prometheus-client is imported inside the builders, never at import time: it picks its multiprocess mode when it
is first imported, which must follow ``posegen api`` setting ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily


class MetricType(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Process(StrEnum):
    """Which process serves a metric: ``posegen api`` on ``/metrics-prometheus``, each ``posegen worker`` on its
    ``/metrics``, ``posegen exporter`` and ``posegen canary`` on theirs."""

    API = "api"
    WORKER = "worker"
    EXPORTER = "exporter"
    CANARY = "canary"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``name`` as PromQL selects it (counters end in ``_total``), ``help`` its HELP text,
    ``labels`` its label names (histograms' ``le`` left out), ``exposed_by`` the processes serving it, ``source``
    where the number comes from."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]
    exposed_by: tuple[Process, ...]
    source: str

    @property
    def family(self) -> str:
        """The family name prometheus-client builds from (a counter's without ``_total``)."""
        return self.name.removesuffix("_total") if self.type is MetricType.COUNTER else self.name

    @property
    def series(self) -> frozenset[str]:
        """The sample names a scrape shows: a histogram's ``_bucket``, ``_sum`` and ``_count``, else the name."""
        if self.type is MetricType.HISTOGRAM:
            return frozenset(f"{self.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        return frozenset({self.name})


C, G, H = MetricType.COUNTER, MetricType.GAUGE, MetricType.HISTOGRAM
API, WORKER, EXPORTER, CANARY = Process.API, Process.WORKER, Process.EXPORTER, Process.CANARY
_ALL = (API, WORKER, EXPORTER, CANARY)
# Where the exporter's numbers come from (exporter/collectors.py).
_QUEUE = "Redis: the RQ queue and its workers, read at scrape time (app.queue.read_queue_counts)"
_PAUSES = "Redis: the operators' planned pause (posegen ops pause)"
_SLOTS = "Redis: the provider-slot limiter's leases (app.worker.limiter)"
_FLEET = "Redis: a hash every worker process adds to at the event (app.observability.fleet_metrics)"
_BOOKS = ("PostgreSQL: the bookkeeping, triggers' deltas folded into totals (app.bookkeeping, view "
          "metrics_exporter_pending)")
_ADMIN_BOOKS = "PostgreSQL: the admin metrics' rollups and their deltas (app.bookkeeping)"
_TIMINGS = ("PostgreSQL: one observation per timing of a row entering a terminal status, folded into "
            "metrics_histogram_totals (app.bookkeeping)")
_REAPER = "PostgreSQL: the reaper's counts, exporter_count() (app.domain.processing.reap_abandoned)"
_SERVERS = "the connection the exporter reads through"

CATALOGUE: tuple[MetricSpec, ...] = (
    # The queue, from Redis.
    MetricSpec("pose_queue_depth", G, "Jobs waiting or running (live executions) on the queue", (),
               (EXPORTER,), _QUEUE),
    MetricSpec("pose_queue_jobs", G, "Job attempts of the pose-generation queue by state (active: live executions "
               "only)", ("state",), (EXPORTER,), _QUEUE),
    MetricSpec("pose_workers", G, "RQ workers of the pose-generation queue by state, with a fresh heartbeat",
               ("state",), (EXPORTER,), _QUEUE),
    MetricSpec("pose_queue_oldest_waiting_job_age_seconds", G,
               "How long the job at the head of the queue has waited (0 when none waits)", (), (EXPORTER,), _QUEUE),
    MetricSpec("pose_intake_paused", G, "1 while an operator has paused intake (POST /generations 503)", (),
               (EXPORTER,), _PAUSES),
    MetricSpec("pose_workers_paused", G, "1 while an operator has suspended the workers (RQ suspension)", (),
               (EXPORTER,), _PAUSES),
    MetricSpec("pose_provider_slots_in_use", G, "Provider slots held now (in-flight provider calls across all "
               "workers)", (), (EXPORTER,), _SLOTS),
    MetricSpec("pose_provider_slots_limit", G, "The cap on provider slots (POSEGEN_PROVIDER_CONCURRENCY)", (),
               (EXPORTER,), _SLOTS + "; the cap the latest worker advertised, else the exporter's setting"),
    # The fleet's counters and histograms, from Redis.
    MetricSpec("pose_provider_slot_wait_seconds", H, "Time a pose waited for a provider slot (the limiter's queue; "
               "grows when the slots are the bottleneck)", (), (EXPORTER,), _FLEET),
    MetricSpec("pose_provider_task_duration_seconds", H, "The provider's own time for a task, from submission "
               "accepted to result ready (FLUX: submit to Ready; local: the render)", (), (EXPORTER,), _FLEET),
    MetricSpec("pose_provider_rate_limited_total", C, "HTTP 429 answers from the image provider, by call step",
               ("step",), (EXPORTER,), _FLEET),
    MetricSpec("pose_provider_retries_total", C, "Image provider HTTP calls retried, by reason", ("reason",),
               (EXPORTER,), _FLEET),
    MetricSpec("pose_job_failures_total", C, "RQ jobs (generation attempts) that failed, by reason", ("reason",),
               (EXPORTER,), _FLEET),
    # The domain's counters, from PostgreSQL.
    MetricSpec("pose_generations_total", C, "Generations created, and generations that reached a terminal status",
               ("status",), (EXPORTER,), _BOOKS),
    MetricSpec("pose_generations_in_progress", G, "Generations now queued or processing", ("status",),
               (EXPORTER,), _BOOKS),
    MetricSpec("pose_poses_total", C, "Pose slots that ended completed or failed", ("status",), (EXPORTER,), _BOOKS),
    MetricSpec("pose_poses_pending", G, "Pose slots waiting for an outcome", (), (EXPORTER,), _BOOKS),
    MetricSpec("pose_errors_total", C, "Recorded errors by seed error type", ("error_type",), (EXPORTER,),
               _ADMIN_BOOKS + "; every seed error type, 0 when unseen"),
    MetricSpec("pose_credits_spent_total", C, "Credits charged for generations", (), (EXPORTER,),
               _ADMIN_BOOKS + " (ledger charges)"),
    MetricSpec("pose_credits_refunded_total", C, "Credits refunded for failed poses", (), (EXPORTER,),
               _ADMIN_BOOKS + " (ledger refunds)"),
    MetricSpec("pose_last_finished_generation_timestamp_seconds", G,
               "Unix time at which the latest generation finished", (), (EXPORTER,),
               _BOOKS + "; absent before any generation finished"),
    MetricSpec("pose_generation_duration_seconds", H, "Finished generations, from creation to finish", (),
               (EXPORTER,), _TIMINGS),
    MetricSpec("pose_provider_call_duration_seconds", H, "Image provider call of each finished pose", (),
               (EXPORTER,), _TIMINGS),
    MetricSpec("pose_upload_duration_seconds", H, "Image upload of each finished pose", (), (EXPORTER,), _TIMINGS),
    MetricSpec("pose_queue_wait_duration_seconds", H,
               "Wait from the generation's creation until work on the pose began", (), (EXPORTER,), _TIMINGS),
    MetricSpec("pose_pose_duration_seconds", H, "Each finished pose, end to end", (), (EXPORTER,), _TIMINGS),
    MetricSpec("pose_generation_requeues_total", C,
               "Abandoned generation attempts the reaper queued again, by reason", ("reason",), (EXPORTER,),
               _REAPER),
    MetricSpec("pose_generation_attempts_exhausted_total", C, "Generations the reaper failed (poses refunded as "
               "TIMEOUT_ERROR) after their last attempt was abandoned", ("reason",), (EXPORTER,), _REAPER),
    MetricSpec("pose_generation_oldest_running_age_seconds", G, "How long the longest-running attempt of a "
               "generation now processing has run (0 when none runs)", (), (EXPORTER,),
               "PostgreSQL: generations now processing, read at scrape time"),
    MetricSpec("pose_users_with_failed_generations", G,
               "Users with at least one generation that failed in the last hour", (), (EXPORTER,),
               "PostgreSQL: generations failed in the hour before the scrape (the blast radius pages name)"),
    MetricSpec("pose_operator_actions_total", C, "Operator actions (retries, dry runs, pauses, resumes)",
               ("action",), (EXPORTER,), "PostgreSQL: rows of the append-only operator_audit table"),
    MetricSpec("pose_generation_time_limit_seconds", G, "The longest one attempt of a generation can run (deadline "
               "x poses / pose concurrency + slack); an attempt running longer is stuck", (), (EXPORTER,),
               "the exporter's settings (app.domain.processing.generation_time_limit_seconds)"),
    # Which servers the exporter reads (a failover shows), and how its sources fare.
    MetricSpec("pose_redis_server_info", G, "1 for the Redis server (master) the exporter reads", ("address",),
               (EXPORTER,), _SERVERS + " (with Sentinel: the master last named)"),
    MetricSpec("pose_database_server_info", G, "1 for the PostgreSQL server the exporter reads", ("address",),
               (EXPORTER,), _SERVERS + " (libpq's choice of a multi-host DATABASE_URL)"),
    MetricSpec("pose_database_in_recovery", G,
               "1 while the PostgreSQL server read is a standby (pg_is_in_recovery), 0 on a primary", (),
               (EXPORTER,), "PostgreSQL: pg_is_in_recovery()"),
    MetricSpec("pose_exporter_server_changes_total", C,
               "Times the server this exporter reads a source from changed (failovers)", ("source",), (EXPORTER,),
               "the exporter's memory, since it started"),
    MetricSpec("pose_exporter_up", G, "1 when this scrape read the source, 0 when it failed or timed out",
               ("source",), (EXPORTER,), "the scrape itself: each source read within its deadline"),
    MetricSpec("pose_exporter_scrape_duration_seconds", G, "Time this scrape spent reading the source",
               ("source",), (EXPORTER,), "the scrape itself"),
    # The API's own, per process (summed over processes in multiprocess mode).
    MetricSpec("pose_http_requests_total", C, "HTTP requests answered by the API", ("method", "route", "status_code"),
               (API,), "the API's ASGI wrapper (app.api.prometheus_metrics), by the status the client got"),
    MetricSpec("pose_http_request_duration_seconds", H, "HTTP request latency of the API", ("method", "route"),
               (API,), "the API's ASGI wrapper (app.api.prometheus_metrics)"),
    MetricSpec("pose_api_batch_size", H, "Requests served per coalesced database call, by kind of call", ("kind",),
               (API,), "the API's coalesced reads (app.api.coalesce)"),
    MetricSpec("pose_api_error_events_unrecorded_total", C, "Error events the API did not write because their "
               "caller had used up POSEGEN_CALLER_ERROR_EVENTS_PER_MINUTE (or it could not be read)",
               ("error_type",), (API,), "the API's per-caller limits (app.api.rate_limit)"),
    MetricSpec("pose_http_request_heads_refused_total", C, "Request heads the API refused before reading them "
               "whole: too_large (431), too_slow (408), crowded_out (closed to make room at the cap), "
               "malformed (400: not HTTP the parser can read)", ("reason",), (API,),
               "the API's HTTP protocol (app.api.connection_bounds)"),
    # Operation timings: the API's in process, the workers' summed per endpoint in Redis.
    MetricSpec("pose_operation_duration_seconds", H,
               "Duration of measured operations (ControlNet render, provider call, upload, pose total, queue wait)",
               ("operation",), (API, WORKER), "the performance tracker (app.observability.performance); a "
               "worker endpoint serves its work-horses' timings from a Redis hash (app.observability.worker_metrics)"),
    MetricSpec("pose_fault_drill_active", G, "1 while this worker injects failures (POSEGEN_FAULTS), else 0", (),
               (WORKER,), "the worker's POSEGEN_FAULTS"),
    MetricSpec("pose_fault_drill_fraction", G, "Fraction of poses this worker fails on purpose, by error type",
               ("error_type",), (WORKER,), "the worker's POSEGEN_FAULTS"),
    # The canary's runs.
    MetricSpec("pose_canary_runs_total", C, "Canary runs by outcome", ("outcome",), (CANARY,),
               "the canary's runs (app.canary), success and failure at 0 from start"),
    MetricSpec("pose_canary_failures_total", C, "Failed canary runs by reason", ("reason",), (CANARY,),
               "the canary's failed runs (app.canary), every reason at 0 from start"),
    MetricSpec("pose_canary_run_duration_seconds", H, "A canary run, create to terminal", ("outcome",), (CANARY,),
               "the canary's runs (app.canary)"),
    MetricSpec("pose_canary_consecutive_failures", G, "Canary runs failed in a row since the latest success", (),
               (CANARY,), "the canary's runs (app.canary)"),
    MetricSpec("pose_canary_last_success_timestamp_seconds", G,
               "When the latest successful canary run ended (Unix seconds)", (), (CANARY,),
               "the canary's runs (app.canary); absent before the first success"),
    # Every process.
    MetricSpec("pose_build_info", G, "The release this process runs (always 1)", ("version", "revision"), _ALL,
               "the package version and POSEGEN_REVISION (app.observability.build_info)"),
)

_BY_NAME = {spec.name: spec for spec in CATALOGUE}


def spec(name: str) -> MetricSpec:
    """The declaration of ``name`` (as PromQL selects it); raises KeyError naming the catalogue when undeclared."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not declared in app/metric_catalogue.py") from None


def _typed(name: str, kind: MetricType) -> MetricSpec:
    declared = spec(name)
    if declared.type is not kind:
        raise TypeError(f"{name} is declared a {declared.type}, not a {kind}")
    return declared


def counter(name: str, **options: Any) -> Counter:
    """A prometheus-client ``Counter`` of ``name`` (``…_total``) with the declared help and labels; ``options``
    (``registry=``) go to its constructor (the default registry when not given)."""
    from prometheus_client import Counter

    declared = _typed(name, C)
    return Counter(declared.family, declared.help, declared.labels, **options)


def gauge(name: str, **options: Any) -> Gauge:
    """A prometheus-client ``Gauge`` of ``name`` with the declared help and labels (``registry=``,
    ``multiprocess_mode=`` in ``options``)."""
    from prometheus_client import Gauge

    declared = _typed(name, G)
    return Gauge(declared.family, declared.help, declared.labels, **options)


def histogram(name: str, **options: Any) -> Histogram:
    """A prometheus-client ``Histogram`` of ``name`` with the declared help and labels (``buckets=`` in seconds,
    or the unit of the name, and ``registry=`` in ``options``)."""
    from prometheus_client import Histogram

    declared = _typed(name, H)
    return Histogram(declared.family, declared.help, declared.labels, **options)


def counter_family(name: str, value: float | None = None) -> CounterMetricFamily:
    """A scrape-time counter family of ``name``: with ``value`` when it has no labels, else add samples to it."""
    from prometheus_client.core import CounterMetricFamily

    declared = _typed(name, C)
    return CounterMetricFamily(declared.family, declared.help, value=value, labels=declared.labels or None)


def gauge_family(name: str, value: float | None = None) -> GaugeMetricFamily:
    """A scrape-time gauge family of ``name``: with ``value`` when it has no labels, else add samples to it."""
    from prometheus_client.core import GaugeMetricFamily

    declared = _typed(name, G)
    return GaugeMetricFamily(declared.family, declared.help, value=value, labels=declared.labels or None)


def histogram_family(name: str) -> HistogramMetricFamily:
    """A scrape-time histogram family of ``name``; add its buckets with ``add_metric``."""
    from prometheus_client.core import HistogramMetricFamily

    declared = _typed(name, H)
    return HistogramMetricFamily(declared.family, declared.help, labels=declared.labels or None)


def contract_series() -> frozenset[str]:
    """Every sample name the service promises (histograms as their ``_bucket``/``_sum``/``_count`` series): what
    alerts, recording rules and dashboards may select."""
    return frozenset().union(*(declared.series for declared in CATALOGUE))


def render_metrics_table() -> str:
    """The metrics reference as a Markdown table, one row per catalogue entry in catalogue order: metric, type,
    labels, exposed by, meaning (the HELP text) and source."""
    rows = ["| Metric | Type | Labels | Exposed by | Meaning | Source |", "|---|---|---|---|---|---|"]
    for declared in CATALOGUE:
        labels = ", ".join(f"`{label}`" for label in declared.labels) or "-"
        exposed = ", ".join(declared.exposed_by)
        cells = (f"`{declared.name}`", declared.type.value, labels, exposed, declared.help, declared.source)
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"
