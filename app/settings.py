"""One typed settings object, read from the environment once and passed down.

Each environment variable is declared once, as the field it fills: its name, default, reader (kind and
bounds), one-line meaning and area (:func:`setting`). :meth:`Settings.from_env` reads every declared field,
then checks what concerns several at once; :func:`render_configuration_table` writes the docs' table from the
same declarations. A bad value raises :class:`SettingsError` whose message names the variable, so start-up can
stop with one clear line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from app.errors import ErrorType
from app.settings_reader import (
    LatencyRange,
    Read,
    Reader,
    RedisSentinel,
    SettingsError,
    choice,
    faults,
    flag,
    hosts,
    integer,
    latency,
    number,
    optional_path,
    or_fallback,
    path,
    placeholder_problem,
    plain_http_problem,
    role_name,
    sentinel,
    text,
    url,
)

__all__ = ["DEV_JWT_SECRET", "LatencyRange", "RedisSentinel", "Settings", "SettingsError",
           "render_configuration_table"]

# The built-in development signing key: long enough for HS256, refused when POSEGEN_ENV=production.
DEV_JWT_SECRET = "dev-secret-change-me-not-for-production"
# RFC 7518 section 3.2: an HS256 key must be at least as long as the hash output, 256 bits.
MIN_JWT_SECRET_BYTES = 32
PRODUCTION = "production"
# CanaryFailing's promise: a page within 15 minutes of an outage. Its runs_failing path needs, at worst, a run
# started an interval after the last success and failed at its timeout, the confirmation run 60 s later failed at
# its timeout (interval + 2 x timeout + 60), then a scrape (15 s), an evaluation (60 s), `for` (60 s) and the pager
# route's group_wait (10 s): interval + 2 x timeout may be at most 900 - 145 - 60 = 695 s. That also keeps the gap
# between two healthy runs' successes (interval + timeout) far below the 900 s of its no_recent_success path.
CANARY_CONFIRM_DELAY_SECONDS = 60
CANARY_PAGE_LATENCY_SECONDS = 15 + 60 + 60 + 10
CANARY_PAGE_WITHIN_SECONDS = 900

POSTGRES = ("postgresql://", "postgres://")
REDIS = ("redis://", "rediss://", "unix://")
HTTP = ("http://", "https://")

# The areas of the configuration, in the order the docs list them.
DATABASE = "Database"
REDIS_AREA = "Redis"
SECURITY = "Security: tokens, console, environment"
PROVIDER = "Image provider (local, FLUX)"
STORAGE = "Storage"
GENERATIONS = "Generations and workers"
CALLER_LIMITS = "Per-caller limits"
API_SERVER = "API server and lifecycle"
OBSERVABILITY = "Observability"
OPERATIONS = "Operations and canary"

_DECLARATION = "posegen.variable"

T = TypeVar("T")


@dataclass(frozen=True)
class Variable:
    """An environment variable as the docs list it: its name, its meaning and, when the field's default does not
    say it well (or it has none of its own), the default as shown."""

    name: str
    doc: str
    shown_default: str | None = None


@dataclass(frozen=True)
class Declaration:
    """How a field of :class:`Settings` is read: its area, its variables (the first is the field's own; the others
    are read with it, e.g. ``REDIS_SENTINEL_MASTER``) and the reader of the first."""

    area: str
    variables: tuple[Variable, ...]
    read: Read


def setting(area: str, name: str, default: T, read: Read, doc: str, *, shown: str | None = None,
            also: tuple[Variable, ...] = ()) -> T:
    """A field of :class:`Settings` read from the variable ``name`` with ``read`` (unset: ``default``),
    documented as ``doc`` under ``area``; ``shown``: the default as the docs show it; ``also``: the variables
    ``read`` reads besides ``name``."""
    declaration = Declaration(area, (Variable(name, doc, shown), *also), read)
    metadata = {_DECLARATION: declaration}
    if isinstance(default, dict):
        empty = dict(default)
        return dataclasses.field(default_factory=lambda: dict(empty), metadata=metadata)  # type: ignore[return-value]
    return dataclasses.field(default=default, metadata=metadata)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Settings:
    # --- Database
    database_url: str = setting(
        DATABASE, "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/posegen", url(*POSTGRES),
        "PostgreSQL, as the processes connect to it: in production the application's role (below); `make dev` "
        "takes it as the owner's and derives the processes'")
    # The schema owner's URL, for `posegen migrate` and `posegen seed` only ("": DATABASE_URL), and the role the
    # application connects as, which migrate grants exactly what the processes use (app/db/grants.sql).
    migration_database_url: str = setting(
        DATABASE, "POSEGEN_MIGRATION_DATABASE_URL", "", url(*POSTGRES, optional=True),
        "the schema owner's URL, for `posegen migrate` and `posegen seed` only (or `--owner-url`); never given to "
        "the API, workers or exporter", shown="`DATABASE_URL`")
    app_db_role: str = setting(
        DATABASE, "POSEGEN_APP_DB_ROLE", "", role_name,
        "the role the processes connect as; every `posegen migrate` (or `--app-role`) re-applies its privileges, "
        "exactly those of `app/db/grants.sql`", shown="– (`make dev`: `<database>_app`)")
    db_pool_size: int = setting(DATABASE, "POSEGEN_DB_POOL_SIZE", 10, integer(1, 200),
                                "most PostgreSQL connections of one API process (1..200)")
    # --- Redis
    redis_url: str = setting(REDIS_AREA, "REDIS_URL", "redis://127.0.0.1:6379/0", url(*REDIS),
                             "Redis (queue, provider slots, rate limits)")
    # REDIS_SENTINELS + REDIS_SENTINEL_MASTER: the master is found through Sentinel (REDIS_URL then gives only
    # the database number, credentials and TLS); None: REDIS_URL's host.
    redis_sentinel: RedisSentinel | None = setting(
        REDIS_AREA, "REDIS_SENTINELS", None, sentinel,
        "comma-separated `host:port` of Redis Sentinels: with `REDIS_SENTINEL_MASTER`, every process finds the "
        "master through them and follows a failover (`REDIS_URL` then gives only the database number, password "
        "and TLS); one without the other refuses start-up",
        also=(Variable("REDIS_SENTINEL_MASTER",
                       "the master's service name the sentinels monitor (`sentinel monitor <name> ...`)"),
              Variable("REDIS_SENTINEL_PASSWORD",
                       "the sentinels' own password (`requirepass` in sentinel.conf), if they have one")))
    # --- Security
    jwt_secret: str = setting(
        SECURITY, "JWT_SECRET", DEV_JWT_SECRET, text,
        "HS256 signing key of tokens (and, derived from it, of image URLs). With `POSEGEN_ENV=production` every "
        "process refuses to start unless it is set, is not the built-in key, and is at least 32 bytes "
        "(`openssl rand -hex 32`)", shown="development: a built-in key")
    jwt_secret_set: bool = False  # whether JWT_SECRET came from the environment
    environment: str = setting(
        SECURITY, "POSEGEN_ENV", "development", or_fallback("NODE_ENV"),
        "`production` switches on the checks of `JWT_SECRET`, of other secrets and of plain-http URLs; also "
        "Sentry's and Datadog's environment",
        also=(Variable("NODE_ENV", "read as `POSEGEN_ENV` when that is unset"),))
    # Longest lifetime of an accepted token (exp - now, and exp - iat): JWTs cannot be revoked, so this is how long
    # a leaked one stays good. A day covers an operator's shift and a web app's sign-in, which mints anew.
    token_max_ttl_seconds: int = setting(
        SECURITY, "POSEGEN_TOKEN_MAX_TTL_SECONDS", 24 * 3600, integer(60, 30 * 24 * 3600),
        "longest lifetime of a token the API accepts (60 s to 30 days): `exp` at most this far ahead (a minute of "
        "clock skew allowed) and, with `iat`, `exp - iat` at most this; `posegen token --ttl` refuses more. A JWT "
        "cannot be revoked, so this is how long a leaked one stays good")
    # The operators' console session: ends after this long without a request, and this long after sign-in.
    console_idle_timeout_seconds: int = setting(
        SECURITY, "POSEGEN_CONSOLE_IDLE_TIMEOUT_SECONDS", 900, integer(60, 24 * 3600),
        "the operators' console session ends after this long without a request (60 s to a day)")
    console_session_max_seconds: int = setting(
        SECURITY, "POSEGEN_CONSOLE_SESSION_MAX_SECONDS", 8 * 3600, integer(60, 7 * 24 * 3600),
        "the operators' console session ends this long after sign-in (60 s to 7 days, at least the idle "
        "timeout), or when its ADMIN token expires, whichever comes first")
    image_url_ttl_seconds: int = setting(
        SECURITY, "POSEGEN_IMAGE_URL_TTL_SECONDS", 3600, integer(10, 7 * 24 * 3600),
        "how long a signed image URL stays valid (up to a tenth longer; polling again gives a fresh one)")
    # --- Image provider
    provider: str = setting(PROVIDER, "POSEGEN_PROVIDER", "local", choice("local", "flux"),
                            "`local` (offline Pillow renderer) or `flux`")
    flux_api_key: str = setting(PROVIDER, "FLUX_API_KEY", "", text,
                                "Black Forest Labs FLUX API key (needed with `POSEGEN_PROVIDER=flux`)")
    flux_base_url: str = setting(PROVIDER, "FLUX_BASE_URL", "https://api.bfl.ai", url(*HTTP),
                                 "the FLUX API's base URL")
    flux_model: str = setting(PROVIDER, "FLUX_MODEL", "flux-pro-1.0-canny", text, "the FLUX model (endpoint)")
    flux_timeout_seconds: float = setting(PROVIDER, "FLUX_TIMEOUT_SECONDS", 30.0, number(0.1),
                                          "timeout of one FLUX call")
    # At most an hour: the longest attempt (rounds of this plus 60 s) sets RQ's job timeout (an alarm(2) of at
    # most 2^31 - 1 s) and the worker pods' terminationGracePeriodSeconds (the kubelet's int64 nanoseconds).
    flux_deadline_seconds: float = setting(PROVIDER, "FLUX_DEADLINE_SECONDS", 300.0, number(0.5, 3600.0),
                                           "longest time one pose may take at FLUX (0.5..3600)")
    flux_poll_interval_seconds: float = setting(
        PROVIDER, "FLUX_POLL_INTERVAL_SECONDS", 0.5, number(0.01),
        "how often a FLUX task is polled (a quarter of it near the expected finish)")
    flux_max_retries: int = setting(PROVIDER, "FLUX_MAX_RETRIES", 4, integer(0, 20),
                                    "retries of a FLUX call answered 429 or 5xx (0..20)")
    flux_webhooks: bool = setting(
        PROVIDER, "FLUX_WEBHOOKS", False, flag,
        "`true`: FLUX posts each finished task to `POSEGEN_PUBLIC_BASE_URL` + "
        "`/api/apps/pose-generator/webhooks/flux` (needs that URL), polling becomes the fallback")
    flux_webhook_secret: str = setting(
        PROVIDER, "FLUX_WEBHOOK_SECRET", "", text,
        "HMAC-SHA256 key FLUX signs its webhooks with (sent with each task)", shown="derived from `JWT_SECRET`")
    flux_webhook_poll_interval_seconds: float = setting(
        PROVIDER, "FLUX_WEBHOOK_POLL_INTERVAL_SECONDS", 5.0, number(0.05),
        "with webhooks on, how often a task is still polled in case its webhook is lost")
    # Where the API key may go and samples may come from (app/providers/flux_hosts.py): BFL's documented
    # global and regional API hosts, and its delivery hosts (delivery-eu1.bfl.ai, delivery-us1.bfl.ai).
    flux_api_hosts: tuple[str, ...] = setting(
        PROVIDER, "FLUX_API_HOSTS", ("api.bfl.ai", "api.*.bfl.ai"), hosts,
        "hosts (over https) besides `FLUX_BASE_URL`'s origin that may receive the API key, i.e. that a "
        "`polling_url` may name; names, IP addresses or one-label `*` patterns")
    flux_delivery_hosts: tuple[str, ...] = setting(
        PROVIDER, "FLUX_DELIVERY_HOSTS", ("delivery-*.bfl.ai", "delivery.*.bfl.ai"), hosts,
        "hosts (over https) besides `FLUX_BASE_URL`'s origin a sample may be downloaded from")
    # Caps on what FLUX answers: a task's JSON is a few hundred bytes; BFL's largest outputs are about 4
    # megapixels, a PNG of at most ~12 MB.
    flux_max_json_bytes: int = setting(
        PROVIDER, "FLUX_MAX_JSON_BYTES", 1024 * 1024, integer(1024, 64 * 1024 * 1024),
        "the longest JSON answer read from FLUX (1 KiB..64 MiB); a longer one fails the pose as `FLUX_API_ERROR`")
    flux_max_image_bytes: int = setting(
        PROVIDER, "FLUX_MAX_IMAGE_BYTES", 20 * 1024 * 1024, integer(1024, 512 * 1024 * 1024),
        "the largest sample read from FLUX (1 KiB..512 MiB); a larger one fails the pose as `FLUX_API_ERROR`")
    flux_max_image_pixels: int = setting(
        PROVIDER, "FLUX_MAX_IMAGE_PIXELS", 4096 * 4096, integer(64 * 64, 100_000_000),
        "the most pixels (width x height, 4096..100000000) a sample may declare; BFL's largest outputs have about "
        "4 million")
    local_latency: LatencyRange = setting(PROVIDER, "POSEGEN_LOCAL_LATENCY", LatencyRange(), latency,
                                          "seconds per pose for the local provider, `2` or `0.5-3`", shown="0")
    image_size: int = setting(PROVIDER, "POSEGEN_IMAGE_SIZE", 512, integer(64, 2048),
                              "side in pixels of the conditioning and local images (64..2048)")
    # --- Storage
    storage_backend: str = setting(
        STORAGE, "STORAGE_BACKEND", "local", choice("local", "supabase"),
        "`local` (files under `POSEGEN_DATA_DIR`, served by the API at signed URLs) or `supabase`")
    data_dir: Path = setting(STORAGE, "POSEGEN_DATA_DIR", Path(".data"), path,
                             "where `local` storage keeps images (and `make dev` its PostgreSQL/Redis)")
    public_base_url: str = setting(
        STORAGE, "POSEGEN_PUBLIC_BASE_URL", "", url(*HTTP, optional=True, strip_slash=True),
        "the API's public address, e.g. `https://api.example.com`: base of the image URLs it hands out and of FLUX "
        "webhooks", shown="– (image URLs relative to the API)")
    supabase_url: str = setting(STORAGE, "SUPABASE_URL", "", url(*HTTP, optional=True, strip_slash=True),
                                "Supabase project URL (with `STORAGE_BACKEND=supabase`)")
    supabase_service_key: str = setting(STORAGE, "SUPABASE_SERVICE_KEY", "", text,
                                        "Supabase service key (with `STORAGE_BACKEND=supabase`)")
    supabase_bucket: str = setting(STORAGE, "SUPABASE_BUCKET", "pose-generations", text,
                                   "the Supabase Storage bucket of the images")
    # --- Generations and workers
    price_per_pose: int = setting(GENERATIONS, "POSEGEN_PRICE_PER_POSE", 30, integer(1), "credits per pose")
    max_poses_per_generation: int = setting(
        GENERATIONS, "POSEGEN_MAX_POSES", 10, integer(1, 100),
        "most poses in one generation (1..100); validation and the OpenAPI schema use it")
    provider_concurrency: int = setting(GENERATIONS, "POSEGEN_PROVIDER_CONCURRENCY", 8, integer(1, 1000),
                                        "in-flight provider calls across all workers")
    pose_concurrency: int = setting(GENERATIONS, "POSEGEN_POSE_CONCURRENCY", 8, integer(1, 1000),
                                    "poses of one generation run at once")
    lease_seconds: float = setting(GENERATIONS, "POSEGEN_LEASE_SECONDS", 30.0, number(1.0),
                                   "a worker's lease on the generation it runs")
    max_attempts: int = setting(GENERATIONS, "POSEGEN_MAX_ATTEMPTS", 3, integer(1, 20),
                                "runs of an abandoned generation before it fails (1..20)")
    # How long a queued generation sits before the reaper checks that its job still exists.
    queued_check_seconds: float = setting(
        GENERATIONS, "POSEGEN_QUEUED_CHECK_SECONDS", 30.0, number(1.0),
        "how long a queued generation waits before the reaper checks that a live worker or the queue holds its "
        "job (a job handed to a dequeue whose answer was lost is re-queued)")
    reaper_interval_seconds: float = setting(
        GENERATIONS, "POSEGEN_REAPER_INTERVAL_SECONDS", 5.0, number(0.1),
        "how often the reaper runs (each pass also folds the bookkeeping deltas into their rollups)")
    retry_slot_share: float = setting(
        GENERATIONS, "POSEGEN_RETRY_SLOT_SHARE", 0.25, number(0.01, 1.0),
        "share of `POSEGEN_PROVIDER_CONCURRENCY` an operator's retries may hold at once (at least one slot)")
    faults: Mapping[ErrorType, float] = setting(
        GENERATIONS, "POSEGEN_FAULTS", {}, faults,
        "drills: `FLUX_API_ERROR=0.1,TIMEOUT_ERROR=0.05,STORAGE_ERROR=0.02`; shown by a start-up warning, "
        "`faultDrill` in `/health` and `pose_fault_drill_active` on worker metrics")
    # --- Per-caller limits
    rate_limit_per_minute: int = setting(
        CALLER_LIMITS, "POSEGEN_RATE_LIMIT_PER_MINUTE", 60, integer(0, 1_000_000),
        "creates per caller in any 60 s (then 429 with `Retry-After`); 0 switches the limit off")
    invalid_create_limit_per_minute: int = setting(
        CALLER_LIMITS, "POSEGEN_INVALID_CREATE_LIMIT_PER_MINUTE", 30, integer(0, 1_000_000),
        "creates refused before processing (400, 406, 413, 415, 422) per caller in any 60 s, after which the "
        "caller's creates get 429; 0 switches it off")
    read_limit_per_minute: int = setting(
        CALLER_LIMITS, "POSEGEN_READ_LIMIT_PER_MINUTE", 1200, integer(0, 100_000_000),
        "authenticated reads (`GET`/`HEAD` with an `Authorization` header) per caller per 60 s window (then 429 "
        "with `Retry-After`); 0 switches the limit off")
    caller_concurrency: int = setting(
        CALLER_LIMITS, "POSEGEN_CALLER_CONCURRENCY", 8, integer(0, 100_000),
        "requests of one caller (a token's subject, or an address) that run at once in one API process; the "
        "caller's others wait their turn; 0 switches the cap off")
    caller_error_events_per_minute: int = setting(
        CALLER_LIMITS, "POSEGEN_CALLER_ERROR_EVENTS_PER_MINUTE", 10, integer(1, 1_000_000),
        "error events (`VALIDATION_ERROR`, `CREDIT_ERROR`) the API writes for one caller per 60 s window; the rest "
        "are counted in `pose_api_error_events_unrecorded_total`, not written (at least 1)")
    # --- API server and lifecycle: bounds of one API process's connections (app/api/connection_bounds.py).
    api_max_header_bytes: int = setting(
        API_SERVER, "POSEGEN_API_MAX_HEADER_BYTES", 32 * 1024, integer(1024, 1024 * 1024),
        "most bytes of a request's line and headers (1024..1048576); over it: 431 and the connection closes")
    api_header_timeout_seconds: float = setting(
        API_SERVER, "POSEGEN_API_HEADER_TIMEOUT_SECONDS", 10.0, number(0.5, 300.0),
        "time for a request's line and headers to arrive, from the connection's start (first request) or the "
        "request's first byte; late: 408 and the connection closes (a connection that sent nothing just closes)")
    api_keep_alive_seconds: int = setting(
        API_SERVER, "POSEGEN_API_KEEP_ALIVE_SECONDS", 5, integer(1, 3600),
        "how long an idle connection stays open after a response (keep it above a load balancer's idle timeout)")
    api_max_connections: int = setting(
        API_SERVER, "POSEGEN_API_MAX_CONNECTIONS", 1000, integer(1, 100_000),
        "connections of one API process (uvicorn's `limit_concurrency`): at it, the connection waiting longest for "
        "a request is closed to make room; when every one is busy, requests are answered 503")
    # After SIGTERM the API keeps serving (readiness 503) this long before it stops accepting connections, while
    # load balancers still route to it (app/api/draining.py); 0: it stops at once, as on SIGINT.
    shutdown_delay_seconds: float = setting(
        API_SERVER, "POSEGEN_SHUTDOWN_DELAY_SECONDS", 0.0, number(0.0, 300.0),
        "after SIGTERM the API keeps serving this long (0..300; readiness `/health` answers 503 with "
        "`shuttingDown: true`, responses carry `Connection: close`) while a load balancer still routes to it, then "
        "stops accepting, finishes in-flight requests (up to 5 s) and exits 0; one server process only (refused "
        "with `--workers N`)")
    # prometheus-client's multiprocess folder (it reads the variable itself in every process); set by
    # `posegen api --workers N` to a fresh folder of its own unless given.
    prometheus_multiproc_dir: Path | None = setting(
        API_SERVER, "PROMETHEUS_MULTIPROC_DIR", None, optional_path,
        "folder for the metric files of `posegen api --workers N` (emptied at start; unset: a temporary folder of "
        "the run's own)")
    # --- Observability
    log_level: str = setting(OBSERVABILITY, "LOG_LEVEL", "INFO", choice("DEBUG", "INFO", "WARN", "WARNING", "ERROR"),
                             "`DEBUG`, `INFO`, `WARN`, `ERROR`")
    revision: str = setting(
        OBSERVABILITY, "POSEGEN_REVISION", "unknown", text,
        "source revision of this build, shown as `pose_build_info{revision}`; the Docker image sets it from its "
        "build argument (`docker build --build-arg POSEGEN_REVISION=$(git rev-parse --short HEAD)`)")
    # Bases of the absolute links in alert notifications, read by `posegen alerts build` (alerts/links.py).
    runbook_base_url: str = setting(
        OBSERVABILITY, "POSEGEN_RUNBOOK_BASE_URL", "https://github.com/posegen/pose-generator/blob/main/alerts/runbooks",
        url(*HTTP, strip_slash=True), "base of every alert's absolute `runbook_url` (`posegen alerts build`)")
    grafana_url: str = setting(OBSERVABILITY, "POSEGEN_GRAFANA_URL", "http://localhost:3000",
                               url(*HTTP, strip_slash=True),
                               "Grafana base of every alert's `dashboard_url` (`posegen alerts build`)")
    sentry_dsn: str = setting(OBSERVABILITY, "SENTRY_DSN", "", url(*HTTP, optional=True),
                              "Sentry error tracking (off unless set)")
    sentry_traces_sample_rate: float = setting(OBSERVABILITY, "SENTRY_TRACES_SAMPLE_RATE", 0.0, number(0.0, 1.0),
                                               "share of requests Sentry traces (0..1)")
    trace_enabled: bool = setting(OBSERVABILITY, "DD_TRACE_ENABLED", False, flag,
                                  "`true` switches on Datadog APM (ddtrace)")
    dd_service: str = setting(OBSERVABILITY, "DD_SERVICE", "pose-generator", text, "the service traces carry")
    dd_env: str = setting(OBSERVABILITY, "DD_ENV", "", text, "the environment traces carry",
                          shown="`POSEGEN_ENV`")
    dd_version: str = setting(OBSERVABILITY, "DD_VERSION", "", text, "the version traces carry",
                              shown="the app's version")
    dd_rq_distributed_tracing: bool | None = setting(
        OBSERVABILITY, "DD_RQ_DISTRIBUTED_TRACING_ENABLED", None, flag,
        "whether a job's trace continues the request's (ddtrace's own flag; unset, ours applies)", shown="on")
    dd_httpx_distributed_tracing: bool | None = setting(
        OBSERVABILITY, "DD_HTTPX_DISTRIBUTED_TRACING", None, flag,
        "whether trace headers are sent to FLUX/Supabase (ddtrace's own flag; unset, ours applies)", shown="off")
    # --- Operations and canary
    ops_api_url: str = setting(
        OPERATIONS, "POSEGEN_API_URL", "http://127.0.0.1:8000", url(*HTTP, strip_slash=True),
        "where `posegen ops` and `posegen canary` send their requests (or `--api`)")
    ops_token: str = setting(OPERATIONS, "POSEGEN_OPS_TOKEN", "", text,
                             "`posegen ops`'s ADMIN token (or `--token`)")
    # `posegen canary` (app/canary.py): one one-pose generation through the API every interval, each bounded by
    # the timeout (queue stuck), its /metrics on the port. Their sum is bounded so that CanaryFailing's "no
    # success for 15 minutes" (alerts/rules/canary.rules.yml) never fires between two healthy runs.
    canary_interval_seconds: float = setting(
        OPERATIONS, "POSEGEN_CANARY_INTERVAL_SECONDS", 300.0, number(1.0, 600.0),
        "`posegen canary`: a run every interval (1..600 s; 60 s after a failed one, to confirm it); interval + 2 × "
        "timeout at most 695 s, so a stuck queue still pages within 15 minutes")
    canary_timeout_seconds: float = setting(
        OPERATIONS, "POSEGEN_CANARY_TIMEOUT_SECONDS", 120.0, number(1.0, 600.0),
        "a canary run not terminal within this long fails (1..600 s)")
    canary_metrics_port: int = setting(OPERATIONS, "POSEGEN_CANARY_METRICS_PORT", 9110, integer(1, 65535),
                                       "`posegen canary`'s `/metrics` port (or `--metrics-port`)")

    @property
    def owner_database_url(self) -> str:
        """Where `posegen migrate` and `posegen seed` connect: as the schema's owner."""
        return self.migration_database_url or self.database_url

    @property
    def is_production(self) -> bool:
        return self.environment.strip().lower() == PRODUCTION

    @property
    def uses_builtin_jwt_secret(self) -> bool:
        """Tokens and image URLs are signed with :data:`DEV_JWT_SECRET`, which anyone can read in this file."""
        return not self.jwt_secret_set or self.jwt_secret == DEV_JWT_SECRET

    @property
    def jwt_secret_warning(self) -> str | None:
        """A secret set outside production that production would refuse as too short; None otherwise (the
        built-in development secret is the development default)."""
        if not self.jwt_secret_set or self.jwt_secret == DEV_JWT_SECRET:
            return None
        return jwt_secret_problem(self.jwt_secret, self.jwt_secret_set)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings from ``environ`` (default: the process environment); raises :class:`SettingsError`
        with one line naming the variable when a value is malformed or unsafe."""
        return cls._load(Reader(os.environ if environ is None else environ))

    @classmethod
    def attempt_shape(cls, environ: Mapping[str, str]) -> tuple[float, int, int]:
        """``(FLUX_DEADLINE_SECONDS, POSEGEN_MAX_POSES, POSEGEN_POSE_CONCURRENCY)`` from ``environ`` (defaults where
        unset), read and checked as :meth:`from_env` does, and nothing else: what the longest attempt of a
        generation depends on (:func:`app.domain.processing.generation_time_limit_seconds`). ``posegen k8s
        build`` reads them from a ConfigMap, which holds no secrets for the other checks. Raises
        :class:`SettingsError`."""
        reader = Reader(environ)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        return (_read(reader, fields["flux_deadline_seconds"]), _read(reader, fields["max_poses_per_generation"]),
                _read(reader, fields["pose_concurrency"]))

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Every environment variable the settings read, with its kind (``number``, ``integer``, ``text``,
        ``choice``, ``url``, ``flag``, ``hosts``, ``faults``, ``latency``), in reading order: for docs and tests."""
        reader = Reader({})
        cls._load(reader)
        return dict(reader.kinds)

    @classmethod
    def _load(cls, reader: Reader) -> Settings:
        values = {f.name: _read(reader, f) for f in dataclasses.fields(cls) if _DECLARATION in f.metadata}
        settings = cls(**values, jwt_secret_set=bool(reader.raw("JWT_SECRET")))
        _check_together(settings)
        return settings


def _read(reader: Reader, field: dataclasses.Field[Any]) -> Any:
    """``field``'s value, read by its declaration (unset: the field's default)."""
    declaration: Declaration = field.metadata[_DECLARATION]
    return declaration.read(reader, declaration.variables[0].name, _default(field))


def _default(field: dataclasses.Field[Any]) -> Any:
    factory = field.default_factory
    return factory() if callable(factory) else field.default


def _check_together(settings: Settings) -> None:
    """What no single variable says: sums and pairs of values, and production's refusals. Raises
    :class:`SettingsError`."""
    worst = (settings.canary_interval_seconds + 2 * settings.canary_timeout_seconds + CANARY_CONFIRM_DELAY_SECONDS
             + CANARY_PAGE_LATENCY_SECONDS)
    if worst > CANARY_PAGE_WITHIN_SECONDS:
        raise SettingsError(
            f"POSEGEN_CANARY_INTERVAL_SECONDS={settings.canary_interval_seconds:g} plus twice "
            f"POSEGEN_CANARY_TIMEOUT_SECONDS={settings.canary_timeout_seconds:g} is over "
            f"{CANARY_PAGE_WITHIN_SECONDS - CANARY_PAGE_LATENCY_SECONDS - CANARY_CONFIRM_DELAY_SECONDS} s: "
            f"CanaryFailing could not page within {CANARY_PAGE_WITHIN_SECONDS // 60} minutes of an outage"
        )
    if settings.redis_sentinel is not None and settings.redis_url.startswith("unix://"):
        raise SettingsError("REDIS_SENTINELS is set but REDIS_URL is a unix:// socket; use redis:// or rediss:// "
                            "(its database number and password apply to the master Sentinel names)")
    if settings.console_idle_timeout_seconds > settings.console_session_max_seconds:
        raise SettingsError(
            f"POSEGEN_CONSOLE_IDLE_TIMEOUT_SECONDS={settings.console_idle_timeout_seconds} is longer than "
            f"POSEGEN_CONSOLE_SESSION_MAX_SECONDS={settings.console_session_max_seconds}"
        )
    if settings.is_production:
        problem = jwt_secret_problem(settings.jwt_secret, settings.jwt_secret_set)
        if problem:
            raise SettingsError(f"{problem} (refused with POSEGEN_ENV=production)")
        for name, secret in (("FLUX_WEBHOOK_SECRET", settings.flux_webhook_secret),):
            problem = placeholder_problem(name, secret) if secret else None
            if problem:
                raise SettingsError(f"{problem} (refused with POSEGEN_ENV=production)")
        for name, address in (("FLUX_BASE_URL", settings.flux_base_url), ("SUPABASE_URL", settings.supabase_url),
                              ("POSEGEN_PUBLIC_BASE_URL", settings.public_base_url)):
            problem = plain_http_problem(name, address)
            if problem:
                raise SettingsError(problem)
    if settings.provider == "flux" and not settings.flux_api_key:
        raise SettingsError("FLUX_API_KEY must be set when POSEGEN_PROVIDER=flux")
    if settings.flux_webhooks and not settings.public_base_url.startswith(("http://", "https://")):
        raise SettingsError(
            "FLUX_WEBHOOKS=true needs POSEGEN_PUBLIC_BASE_URL (http:// or https://), where FLUX posts results"
        )
    if settings.storage_backend == "supabase" and not (settings.supabase_url and settings.supabase_service_key):
        raise SettingsError("SUPABASE_URL and SUPABASE_SERVICE_KEY must be set when STORAGE_BACKEND=supabase")


def jwt_secret_problem(secret: str, set_explicitly: bool) -> str | None:
    """Why ``secret`` may not sign tokens in production (unset, the built-in key, shorter than HS256 needs, a
    placeholder or a pattern), in one line; None when it may."""
    if not set_explicitly:
        return "JWT_SECRET is not set; set it to a random secret of at least 32 bytes"
    if secret == DEV_JWT_SECRET:
        return "JWT_SECRET is the built-in development secret; set a random secret of at least 32 bytes"
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        return (f"JWT_SECRET is {len(secret.encode())} bytes; HS256 needs a secret of at least "
                f"{MIN_JWT_SECRET_BYTES} bytes")
    return placeholder_problem("JWT_SECRET", secret)


def declarations() -> list[tuple[Declaration, Any]]:
    """Each declared field's declaration with its default, in declaration order."""
    return [(f.metadata[_DECLARATION], _default(f)) for f in dataclasses.fields(Settings) if _DECLARATION in f.metadata]


def render_configuration_table() -> str:
    """The configuration reference as Markdown, from the declarations: per area a ``### area`` heading and a
    table of ``variable | default | meaning``, one row per variable (exactly :meth:`Settings.variables`)."""
    areas: dict[str, list[str]] = {}
    for declaration, default in declarations():
        rows = areas.setdefault(declaration.area, [])
        for position, variable in enumerate(declaration.variables):
            shown = variable.shown_default
            if shown is None:
                shown = _shown(default) if position == 0 else "–"
            meaning = variable.doc.replace("|", "\\|")
            rows.append(f"| `{variable.name}` | {shown} | {meaning} |")
    parts = []
    for area, rows in areas.items():
        parts.append(f"### {area}\n\n| variable | default | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def _shown(default: Any) -> str:
    """A default as the docs show it: ``–`` for none, numbers plain, words and lists as code."""
    if default is None or default == "" or default == {}:
        return "–"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, int | float):
        return f"{default:g}"
    if isinstance(default, tuple):
        return f"`{','.join(default)}`"
    return f"`{default}`"
