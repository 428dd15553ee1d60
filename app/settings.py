"""One typed settings object, read from the environment once and passed down.

A bad value raises :class:`SettingsError` whose message names the variable, so
start-up can stop with one clear line.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from app.errors import ErrorType

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


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class LatencyRange:
    """Seconds of simulated latency per pose for the local provider: fixed or uniform in [low, high]."""

    low: float = 0.0
    high: float = 0.0


@dataclass(frozen=True)
class RedisSentinel:
    """Where Redis Sentinel finds the master: the sentinels' ``(host, port)`` addresses, the monitored
    service's name (Sentinel's ``master-name``) and the sentinels' own password ("" for none)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    password: str = ""


@dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/posegen"
    # The schema owner's URL, for `posegen migrate` and `posegen seed` only ("": DATABASE_URL), and the role the
    # application connects as, which migrate grants exactly what the processes use (app/db/grants.sql).
    migration_database_url: str = ""
    app_db_role: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    # REDIS_SENTINELS + REDIS_SENTINEL_MASTER: the master is found through Sentinel (REDIS_URL then gives only
    # the database number, credentials and TLS); None: REDIS_URL's host.
    redis_sentinel: RedisSentinel | None = None
    jwt_secret: str = DEV_JWT_SECRET
    jwt_secret_set: bool = False  # whether JWT_SECRET came from the environment
    provider: str = "local"
    flux_api_key: str = ""
    flux_base_url: str = "https://api.bfl.ai"
    flux_model: str = "flux-pro-1.0-canny"
    flux_timeout_seconds: float = 30.0
    flux_deadline_seconds: float = 300.0
    flux_poll_interval_seconds: float = 0.5
    flux_max_retries: int = 4
    flux_webhooks: bool = False
    flux_webhook_secret: str = ""
    flux_webhook_poll_interval_seconds: float = 5.0
    # Where the API key may go and samples may come from (app/providers/flux_hosts.py): BFL's documented
    # global and regional API hosts, and its delivery hosts (delivery-eu1.bfl.ai, delivery-us1.bfl.ai).
    flux_api_hosts: tuple[str, ...] = ("api.bfl.ai", "api.*.bfl.ai")
    flux_delivery_hosts: tuple[str, ...] = ("delivery-*.bfl.ai", "delivery.*.bfl.ai")
    # Caps on what FLUX answers: a task's JSON is a few hundred bytes; BFL's largest outputs are about 4
    # megapixels, a PNG of at most ~12 MB.
    flux_max_json_bytes: int = 1024 * 1024
    flux_max_image_bytes: int = 20 * 1024 * 1024
    flux_max_image_pixels: int = 4096 * 4096
    storage_backend: str = "local"
    data_dir: Path = Path(".data")
    public_base_url: str = ""
    supabase_url: str = ""
    supabase_service_key: str = ""
    supabase_bucket: str = "pose-generations"
    price_per_pose: int = 30
    max_poses_per_generation: int = 10
    provider_concurrency: int = 8
    pose_concurrency: int = 8
    lease_seconds: float = 30.0
    reaper_interval_seconds: float = 5.0
    # How long a queued generation sits before the reaper checks that its job still exists.
    queued_check_seconds: float = 30.0
    max_attempts: int = 3
    faults: Mapping[ErrorType, float] = field(default_factory=dict)
    local_latency: LatencyRange = LatencyRange()
    image_size: int = 512
    log_level: str = "INFO"
    environment: str = "development"
    # Bases of the absolute links in alert notifications, read by `posegen alerts build` (alerts/links.py).
    runbook_base_url: str = "https://github.com/posegen/pose-generator/blob/main/alerts/runbooks"
    grafana_url: str = "http://localhost:3000"
    sentry_dsn: str = ""
    sentry_traces_sample_rate: float = 0.0
    trace_enabled: bool = False
    dd_service: str = "pose-generator"
    dd_env: str = ""
    dd_version: str = ""
    dd_rq_distributed_tracing: bool | None = None
    dd_httpx_distributed_tracing: bool | None = None
    db_pool_size: int = 10
    # Bounds of one API process's connections (app/api/connection_bounds.py).
    api_max_header_bytes: int = 32 * 1024
    api_header_timeout_seconds: float = 10.0
    api_keep_alive_seconds: int = 5
    api_max_connections: int = 1000
    # After SIGTERM the API keeps serving (readiness 503) this long before it stops accepting connections, while
    # load balancers still route to it (app/api/draining.py); 0: it stops at once, as on SIGINT.
    shutdown_delay_seconds: float = 0.0
    rate_limit_per_minute: int = 60
    invalid_create_limit_per_minute: int = 30
    read_limit_per_minute: int = 1200
    caller_error_events_per_minute: int = 10
    caller_concurrency: int = 8
    revision: str = "unknown"
    # prometheus-client's multiprocess folder (it reads the variable itself in every process); set by
    # `posegen api --workers N` to a fresh folder of its own unless given.
    prometheus_multiproc_dir: Path | None = None
    retry_slot_share: float = 0.25
    ops_api_url: str = "http://127.0.0.1:8000"
    ops_token: str = ""
    image_url_ttl_seconds: int = 3600
    # Longest lifetime of an accepted token (exp - now, and exp - iat): JWTs cannot be revoked, so this is how long
    # a leaked one stays good. A day covers an operator's shift and a web app's sign-in, which mints anew.
    token_max_ttl_seconds: int = 24 * 3600
    # The operators' console session: ends after this long without a request, and this long after sign-in.
    console_idle_timeout_seconds: int = 900
    console_session_max_seconds: int = 8 * 3600
    # `posegen canary` (app/canary.py): one one-pose generation through the API every interval, each bounded by
    # the timeout (queue stuck), its /metrics on the port. Their sum is bounded so that CanaryFailing's "no
    # success for 15 minutes" (alerts/rules/canary.rules.yml) never fires between two healthy runs.
    canary_interval_seconds: float = 300.0
    canary_timeout_seconds: float = 120.0
    canary_metrics_port: int = 9110

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
        return _jwt_secret_problem(self.jwt_secret, self.jwt_secret_set)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings from ``environ`` (default: the process environment); raises :class:`SettingsError`
        with one line naming the variable when a value is malformed or unsafe."""
        return cls._load(_Reader(os.environ if environ is None else environ))

    @classmethod
    def attempt_shape(cls, environ: Mapping[str, str]) -> tuple[float, int, int]:
        """``(FLUX_DEADLINE_SECONDS, POSEGEN_MAX_POSES, POSEGEN_POSE_CONCURRENCY)`` from ``environ`` (defaults where
        unset), read and checked as :meth:`from_env` does, and nothing else: what the longest attempt of a
        generation depends on (:func:`app.domain.processing.generation_time_limit_seconds`). ``posegen k8s
        build`` reads them from a ConfigMap, which holds no secrets for the other checks. Raises
        :class:`SettingsError`."""
        reader = _Reader(environ)
        return _flux_deadline(reader), _max_poses(reader), _pose_concurrency(reader)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Every environment variable the settings read, with its kind (``number``, ``integer``, ``text``,
        ``choice``, ``url``, ``flag``, ``faults``, ``latency``), in reading order: for docs and tests."""
        reader = _Reader({})
        cls._load(reader)
        return dict(reader.kinds)

    @classmethod
    def _load(cls, reader: _Reader) -> Settings:
        provider = reader.choice("POSEGEN_PROVIDER", "local", ("local", "flux"))
        settings = cls(
            database_url=reader.url("DATABASE_URL", cls.database_url, ("postgresql://", "postgres://")),
            migration_database_url=reader.url("POSEGEN_MIGRATION_DATABASE_URL", "", ("postgresql://", "postgres://"),
                                              optional=True),
            app_db_role=reader.role_name("POSEGEN_APP_DB_ROLE"),
            redis_url=reader.url("REDIS_URL", cls.redis_url, ("redis://", "rediss://", "unix://")),
            redis_sentinel=reader.sentinel(),
            jwt_secret=reader.text("JWT_SECRET", cls.jwt_secret),
            jwt_secret_set=bool(reader.raw("JWT_SECRET")),
            provider=provider,
            flux_api_key=reader.text("FLUX_API_KEY", ""),
            flux_base_url=reader.url("FLUX_BASE_URL", cls.flux_base_url, ("http://", "https://")),
            flux_model=reader.text("FLUX_MODEL", cls.flux_model),
            flux_timeout_seconds=reader.number("FLUX_TIMEOUT_SECONDS", cls.flux_timeout_seconds, minimum=0.1),
            flux_deadline_seconds=_flux_deadline(reader),
            flux_poll_interval_seconds=reader.number(
                "FLUX_POLL_INTERVAL_SECONDS", cls.flux_poll_interval_seconds, minimum=0.01
            ),
            flux_max_retries=reader.integer("FLUX_MAX_RETRIES", cls.flux_max_retries, minimum=0, maximum=20),
            flux_webhooks=bool(reader.flag("FLUX_WEBHOOKS", cls.flux_webhooks)),
            flux_webhook_secret=reader.text("FLUX_WEBHOOK_SECRET", ""),
            flux_webhook_poll_interval_seconds=reader.number(
                "FLUX_WEBHOOK_POLL_INTERVAL_SECONDS", cls.flux_webhook_poll_interval_seconds, minimum=0.05
            ),
            flux_api_hosts=reader.hosts("FLUX_API_HOSTS", cls.flux_api_hosts),
            flux_delivery_hosts=reader.hosts("FLUX_DELIVERY_HOSTS", cls.flux_delivery_hosts),
            flux_max_json_bytes=reader.integer(
                "FLUX_MAX_JSON_BYTES", cls.flux_max_json_bytes, minimum=1024, maximum=64 * 1024 * 1024
            ),
            flux_max_image_bytes=reader.integer(
                "FLUX_MAX_IMAGE_BYTES", cls.flux_max_image_bytes, minimum=1024, maximum=512 * 1024 * 1024
            ),
            flux_max_image_pixels=reader.integer(
                "FLUX_MAX_IMAGE_PIXELS", cls.flux_max_image_pixels, minimum=64 * 64, maximum=100_000_000
            ),
            storage_backend=reader.choice("STORAGE_BACKEND", "local", ("local", "supabase")),
            data_dir=Path(reader.text("POSEGEN_DATA_DIR", str(cls.data_dir))),
            public_base_url=reader.url("POSEGEN_PUBLIC_BASE_URL", "", ("http://", "https://"),
                                       optional=True).rstrip("/"),
            supabase_url=reader.url("SUPABASE_URL", "", ("http://", "https://"), optional=True).rstrip("/"),
            supabase_service_key=reader.text("SUPABASE_SERVICE_KEY", ""),
            supabase_bucket=reader.text("SUPABASE_BUCKET", cls.supabase_bucket),
            price_per_pose=reader.integer("POSEGEN_PRICE_PER_POSE", cls.price_per_pose, minimum=1),
            max_poses_per_generation=_max_poses(reader),
            provider_concurrency=reader.integer(
                "POSEGEN_PROVIDER_CONCURRENCY", cls.provider_concurrency, minimum=1, maximum=1000
            ),
            pose_concurrency=_pose_concurrency(reader),
            lease_seconds=reader.number("POSEGEN_LEASE_SECONDS", cls.lease_seconds, minimum=1.0),
            reaper_interval_seconds=reader.number(
                "POSEGEN_REAPER_INTERVAL_SECONDS", cls.reaper_interval_seconds, minimum=0.1
            ),
            queued_check_seconds=reader.number(
                "POSEGEN_QUEUED_CHECK_SECONDS", cls.queued_check_seconds, minimum=1.0
            ),
            max_attempts=reader.integer("POSEGEN_MAX_ATTEMPTS", cls.max_attempts, minimum=1, maximum=20),
            faults=parse_faults(reader.raw("POSEGEN_FAULTS", "faults")),
            local_latency=parse_latency(reader.raw("POSEGEN_LOCAL_LATENCY", "latency")),
            image_size=reader.integer("POSEGEN_IMAGE_SIZE", cls.image_size, minimum=64, maximum=2048),
            log_level=reader.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARN", "WARNING", "ERROR")),
            environment=reader.text("POSEGEN_ENV", reader.text("NODE_ENV", cls.environment)),
            runbook_base_url=reader.url("POSEGEN_RUNBOOK_BASE_URL", cls.runbook_base_url,
                                        ("http://", "https://")).rstrip("/"),
            grafana_url=reader.url("POSEGEN_GRAFANA_URL", cls.grafana_url, ("http://", "https://")).rstrip("/"),
            sentry_dsn=reader.url("SENTRY_DSN", "", ("http://", "https://"), optional=True),
            sentry_traces_sample_rate=reader.number(
                "SENTRY_TRACES_SAMPLE_RATE", 0.0, minimum=0.0, maximum=1.0
            ),
            trace_enabled=reader.flag("DD_TRACE_ENABLED", False) or False,
            dd_service=reader.text("DD_SERVICE", cls.dd_service),
            dd_env=reader.text("DD_ENV", ""),
            dd_version=reader.text("DD_VERSION", ""),
            dd_rq_distributed_tracing=reader.flag("DD_RQ_DISTRIBUTED_TRACING_ENABLED", None),
            dd_httpx_distributed_tracing=reader.flag("DD_HTTPX_DISTRIBUTED_TRACING", None),
            rate_limit_per_minute=reader.integer(
                "POSEGEN_RATE_LIMIT_PER_MINUTE", cls.rate_limit_per_minute, minimum=0, maximum=1_000_000
            ),
            invalid_create_limit_per_minute=reader.integer(
                "POSEGEN_INVALID_CREATE_LIMIT_PER_MINUTE", cls.invalid_create_limit_per_minute, minimum=0,
                maximum=1_000_000,
            ),
            read_limit_per_minute=reader.integer(
                "POSEGEN_READ_LIMIT_PER_MINUTE", cls.read_limit_per_minute, minimum=0, maximum=100_000_000
            ),
            caller_concurrency=reader.integer(
                "POSEGEN_CALLER_CONCURRENCY", cls.caller_concurrency, minimum=0, maximum=100_000
            ),
            caller_error_events_per_minute=reader.integer(
                "POSEGEN_CALLER_ERROR_EVENTS_PER_MINUTE", cls.caller_error_events_per_minute, minimum=1,
                maximum=1_000_000,
            ),
            db_pool_size=reader.integer("POSEGEN_DB_POOL_SIZE", cls.db_pool_size, minimum=1, maximum=200),
            api_max_header_bytes=reader.integer(
                "POSEGEN_API_MAX_HEADER_BYTES", cls.api_max_header_bytes, minimum=1024, maximum=1024 * 1024
            ),
            api_header_timeout_seconds=reader.number(
                "POSEGEN_API_HEADER_TIMEOUT_SECONDS", cls.api_header_timeout_seconds, minimum=0.5, maximum=300.0
            ),
            api_keep_alive_seconds=reader.integer(
                "POSEGEN_API_KEEP_ALIVE_SECONDS", cls.api_keep_alive_seconds, minimum=1, maximum=3600
            ),
            api_max_connections=reader.integer(
                "POSEGEN_API_MAX_CONNECTIONS", cls.api_max_connections, minimum=1, maximum=100_000
            ),
            shutdown_delay_seconds=reader.number(
                "POSEGEN_SHUTDOWN_DELAY_SECONDS", cls.shutdown_delay_seconds, minimum=0.0, maximum=300.0
            ),
            revision=reader.text("POSEGEN_REVISION", cls.revision),
            prometheus_multiproc_dir=reader.path("PROMETHEUS_MULTIPROC_DIR"),
            ops_api_url=reader.url("POSEGEN_API_URL", cls.ops_api_url, ("http://", "https://")).rstrip("/"),
            ops_token=reader.text("POSEGEN_OPS_TOKEN", ""),
            retry_slot_share=reader.number(
                "POSEGEN_RETRY_SLOT_SHARE", cls.retry_slot_share, minimum=0.01, maximum=1.0
            ),
            image_url_ttl_seconds=reader.integer(
                "POSEGEN_IMAGE_URL_TTL_SECONDS", cls.image_url_ttl_seconds, minimum=10, maximum=7 * 24 * 3600
            ),
            token_max_ttl_seconds=reader.integer(
                "POSEGEN_TOKEN_MAX_TTL_SECONDS", cls.token_max_ttl_seconds, minimum=60, maximum=30 * 24 * 3600
            ),
            console_idle_timeout_seconds=reader.integer(
                "POSEGEN_CONSOLE_IDLE_TIMEOUT_SECONDS", cls.console_idle_timeout_seconds, minimum=60,
                maximum=24 * 3600
            ),
            console_session_max_seconds=reader.integer(
                "POSEGEN_CONSOLE_SESSION_MAX_SECONDS", cls.console_session_max_seconds, minimum=60,
                maximum=7 * 24 * 3600
            ),
            canary_interval_seconds=reader.number(
                "POSEGEN_CANARY_INTERVAL_SECONDS", cls.canary_interval_seconds, minimum=1.0, maximum=600.0
            ),
            canary_timeout_seconds=reader.number(
                "POSEGEN_CANARY_TIMEOUT_SECONDS", cls.canary_timeout_seconds, minimum=1.0, maximum=600.0
            ),
            canary_metrics_port=reader.integer(
                "POSEGEN_CANARY_METRICS_PORT", cls.canary_metrics_port, minimum=1, maximum=65535
            ),
        )
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
            problem = _jwt_secret_problem(settings.jwt_secret, settings.jwt_secret_set)
            if problem:
                raise SettingsError(f"{problem} (refused with POSEGEN_ENV=production)")
            for name, secret in (("FLUX_WEBHOOK_SECRET", settings.flux_webhook_secret),):
                problem = _placeholder_problem(name, secret) if secret else None
                if problem:
                    raise SettingsError(f"{problem} (refused with POSEGEN_ENV=production)")
            for name, url in (("FLUX_BASE_URL", settings.flux_base_url), ("SUPABASE_URL", settings.supabase_url),
                              ("POSEGEN_PUBLIC_BASE_URL", settings.public_base_url)):
                problem = _plain_http_problem(name, url)
                if problem:
                    raise SettingsError(problem)
        if settings.provider == "flux" and not settings.flux_api_key:
            raise SettingsError("FLUX_API_KEY must be set when POSEGEN_PROVIDER=flux")
        if settings.flux_webhooks and not settings.public_base_url.startswith(("http://", "https://")):
            raise SettingsError(
                "FLUX_WEBHOOKS=true needs POSEGEN_PUBLIC_BASE_URL (http:// or https://), where FLUX posts results"
            )
        if settings.storage_backend == "supabase" and not (
            settings.supabase_url and settings.supabase_service_key
        ):
            raise SettingsError(
                "SUPABASE_URL and SUPABASE_SERVICE_KEY must be set when STORAGE_BACKEND=supabase"
            )
        return settings


def _flux_deadline(reader: _Reader) -> float:
    return reader.number("FLUX_DEADLINE_SECONDS", Settings.flux_deadline_seconds, minimum=0.5)


def _max_poses(reader: _Reader) -> int:
    return reader.integer("POSEGEN_MAX_POSES", Settings.max_poses_per_generation, minimum=1, maximum=100)


def _pose_concurrency(reader: _Reader) -> int:
    return reader.integer("POSEGEN_POSE_CONCURRENCY", Settings.pose_concurrency, minimum=1, maximum=1000)


def _check_port(port: int | str | None) -> None:
    if port is not None and not (str(port).isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"invalid port {port}")


def _check_postgres_url(value: str) -> None:
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(value)
    except ProgrammingError as exc:
        raise ValueError(str(exc).strip().splitlines()[0]) from None
    for port in str(params.get("port") or "").split(","):
        _check_port(port or None)


def _check_redis_url(value: str) -> None:
    from redis.connection import parse_url

    options = parse_url(value)  # ValueError for a bad db/socket_timeout/... query value
    if value.startswith("unix://"):
        if not options.get("path"):
            raise ValueError("names no socket path")
        return
    parts = urlsplit(value)
    _check_port(parts.port)
    if not parts.hostname:
        raise ValueError("names no host")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError("the path must be a Redis database number, such as /0")


def _jwt_secret_problem(secret: str, set_explicitly: bool) -> str | None:
    if not set_explicitly:
        return "JWT_SECRET is not set; set it to a random secret of at least 32 bytes"
    if secret == DEV_JWT_SECRET:
        return "JWT_SECRET is the built-in development secret; set a random secret of at least 32 bytes"
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        return (f"JWT_SECRET is {len(secret.encode())} bytes; HS256 needs a secret of at least "
                f"{MIN_JWT_SECRET_BYTES} bytes")
    return _placeholder_problem("JWT_SECRET", secret)


# A secret of fewer distinct characters than this is a typed pattern, not a random one: 32 random bytes in
# hex or base64 show 14 or more (``aaaa...``, ``abab...`` show 1 or 2).
MIN_SECRET_DISTINCT_CHARACTERS = 10
# Words of the examples and templates a secret is copied from, never of a random one.
_PLACEHOLDER_WORDS = ("changeme", "replaceme", "placeholder", "yoursecret", "your256bitsecret", "example", "dontuse",
                      "notforproduction")


def _placeholder_problem(name: str, secret: str) -> str | None:
    """A secret that is long enough but is a placeholder or a pattern; None when it may be random."""
    letters = "".join(c for c in secret.lower() if c.isalnum())
    word = next((w for w in _PLACEHOLDER_WORDS if w in letters), None)
    if word is not None:
        return f"{name} looks like a placeholder (it contains {word!r}); set a random secret"
    if len(set(secret)) < MIN_SECRET_DISTINCT_CHARACTERS:
        return (f"{name} has {len(set(secret))} distinct characters, a pattern rather than a random secret; "
                "generate one, e.g. openssl rand -hex 32")
    unit = next((n for n in range(1, len(secret) // 2 + 1)
                 if (secret[:n] * (len(secret) // n + 1)).startswith(secret)), None)
    if unit is not None:
        return (f"{name} repeats its first {unit} characters, a pattern rather than a random secret; "
                "generate one, e.g. openssl rand -hex 32")
    return None


_LOOPBACK_HOSTS = ("localhost", "::1")


def _is_loopback(host: str | None) -> bool:
    return bool(host) and (host in _LOOPBACK_HOSTS or str(host).startswith("127."))


def _plain_http_problem(name: str, url: str) -> str | None:
    """An ``http://`` URL to another host, refused in production: what crosses a network goes over TLS (a
    provider key, users' images and webhook results would travel in the clear)."""
    if url.startswith("http://") and not _is_loopback(urlsplit(url).hostname):
        return f"{name}={shown_url(url)!r} is plain http; use https:// (refused with POSEGEN_ENV=production)"
    return None


def shown_url(value: str, text: str | None = None) -> str:
    """``text`` (default: ``value`` itself) fit to print: every password ``value`` carries, as a URL's
    (``scheme://user:PASSWORD@host``, up to the authority's last ``@``, so an unencoded ``@`` in it hides nothing)
    or as ``password=`` (libpq keyword strings, query strings), raw or percent-decoded, replaced by ``***``.
    Textual, so a URL too broken to parse is redacted too, and so is a parser's message that quotes it."""
    shown = value if text is None else text
    for secret in sorted(_passwords_in(value), key=len, reverse=True):
        shown = shown.replace(secret, "***")
    return shown


def _passwords_in(value: str) -> set[str]:
    from urllib.parse import unquote

    found = {m.group(1) for m in _URL_PASSWORD.finditer(value)}
    found |= {m.group(2) for m in _KEYWORD_PASSWORD.finditer(value)}
    forms = {form for secret in found if secret for form in (secret, unquote(secret)) if form}
    # A parser may quote a piece of a password with an unencoded '@', ':' or '/' in it: those pieces too.
    return forms | {piece for form in forms for piece in re.split(r"[@:/]", form) if len(piece) >= 4}


_ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_URL_PASSWORD = re.compile(r"://[^/@\s:]*:([^/\s]*)@")
_KEYWORD_PASSWORD = re.compile(r"(?i)(password\s*=\s*)([^&\s]*)")


class _Reader:
    """Reads variables by kind, and records each name it read with its kind (see :meth:`Settings.variables`)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.kinds: dict[str, str] = {}

    def raw(self, name: str, kind: str = "text") -> str:
        self.kinds.setdefault(name, kind)
        return self._env.get(name) or ""

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def sentinel(self) -> RedisSentinel | None:
        """``REDIS_SENTINELS`` (comma-separated ``host:port``, IPv6 as ``[::1]:26379``) with
        ``REDIS_SENTINEL_MASTER`` (the service name), both or neither, and ``REDIS_SENTINEL_PASSWORD`` (the
        sentinels' ``requirepass``, if any); None when neither is set."""
        self.kinds.setdefault("REDIS_SENTINELS", "hosts")
        self.kinds.setdefault("REDIS_SENTINEL_MASTER", "text")
        raw, master = self.raw("REDIS_SENTINELS", "hosts").strip(), self.raw("REDIS_SENTINEL_MASTER").strip()
        password = self.raw("REDIS_SENTINEL_PASSWORD")
        if not raw and not master:
            if password:
                raise SettingsError("REDIS_SENTINEL_PASSWORD is set without REDIS_SENTINELS and REDIS_SENTINEL_MASTER")
            return None
        if not raw:
            raise SettingsError("REDIS_SENTINEL_MASTER is set without REDIS_SENTINELS (host:port,host:port,...)")
        if not master:
            raise SettingsError("REDIS_SENTINELS is set without REDIS_SENTINEL_MASTER (the monitored master's name)")
        if any(c.isspace() or c in "/@" for c in master):
            raise SettingsError(f"REDIS_SENTINEL_MASTER={master!r} is not a Sentinel master name")
        sentinels = []
        for item in (part.strip() for part in raw.split(",")):
            host, sep, port = item.rpartition(":")
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            if not sep or not host or any(c.isspace() or c in "/@[]" for c in host) or not (
                    port.isdigit() and 1 <= int(port) <= 65535):
                raise SettingsError(f"REDIS_SENTINELS entry {item!r} is not host:port (port 1-65535)")
            sentinels.append((host, int(port)))
        return RedisSentinel(tuple(sentinels), master, password)

    def role_name(self, name: str) -> str:
        """A PostgreSQL role name, as plain as one in a URL stays readable: letters, digits and ``_``, up to 63."""
        value = self.text(name, "")
        if value and not _ROLE_NAME.fullmatch(value):
            raise SettingsError(f"{name}={value!r} is not a role name: letters, digits and _, up to 63, "
                                "not starting with a digit")
        return value

    def path(self, name: str) -> Path | None:
        value = self.text(name, "")
        return Path(value) if value else None

    def flag(self, name: str, default: bool | None) -> bool | None:
        """A switch: ``true``/``1``/``yes``/``on`` or ``false``/``0``/``no``/``off`` (any case); unset gives
        ``default`` (None: the variable's owner, such as ddtrace, decides)."""
        raw = self.raw(name, "flag").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={raw!r} is not a switch: use true or false")

    def hosts(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A comma-separated host list (see :func:`parse_host_patterns`); unset gives ``default``."""
        raw = self.raw(name, "hosts")
        return parse_host_patterns(name, raw) if raw.strip() else default

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        self.kinds.setdefault(name, "choice")
        value = self.text(name, default)
        if value not in allowed:
            raise SettingsError(f"{name}={value!r} is not one of: {', '.join(allowed)}")
        return value

    def url(self, name: str, default: str, schemes: tuple[str, ...], *, optional: bool = False) -> str:
        """A URL of one of ``schemes``, no whitespace, parsed as its client parses it: PostgreSQL URLs by libpq's
        rules (psycopg's ``conninfo_to_dict``: a unix-socket ``host=`` query or several hosts are fine),
        Redis URLs by redis-py's ``parse_url`` (``db``, ``socket_timeout`` query values; the path a database
        number), others with a host. Ports are 1-65535. ``optional``: unset is ""."""
        self.kinds.setdefault(name, "url")
        value = self.text(name, default)
        if optional and not value:
            return ""
        if not value.startswith(schemes):
            raise SettingsError(f"{name}={shown_url(value)!r} must start with one of: {', '.join(schemes)}")
        if any(c.isspace() for c in value):
            raise SettingsError(f"{name}={shown_url(value)!r} contains whitespace")
        if value == default:
            return value
        try:
            if value.startswith(("postgresql://", "postgres://")):
                _check_postgres_url(value)
            elif value.startswith(("redis://", "rediss://", "unix://")):
                _check_redis_url(value)
            else:
                parts = urlsplit(value)
                _check_port(parts.port)
                if not parts.hostname:
                    raise ValueError("names no host")
        except ValueError as exc:
            raise SettingsError(f"{name}={shown_url(value)!r}: {shown_url(value, str(exc))}") from None
        return value

    def number(
        self, name: str, default: float, *, minimum: float | None = None, maximum: float | None = None
    ) -> float:
        raw = self.raw(name, "number")
        if not raw:
            return default
        value = _finite(name, raw)
        _check_range(name, raw, value, minimum, maximum)
        return value

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        raw = self.raw(name, "integer")
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a whole number") from None
        _check_range(name, raw, value, minimum, maximum)
        return value


def _finite(name: str, raw: str) -> float:
    """``raw`` as a float; nan and the infinities are refused (every comparison with nan is false, so a
    range check alone would let it through)."""
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name}={raw!r} must be a finite number")
    return value


def _check_range(name: str, raw: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name}={raw!r} must be at most {maximum}")


def parse_faults(raw: str) -> dict[ErrorType, float]:
    """Parse ``POSEGEN_FAULTS`` such as ``FLUX_API_ERROR=0.1,TIMEOUT_ERROR=0.05``."""
    faults: dict[ErrorType, float] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, fraction = item.partition("=")
        if not sep:
            raise SettingsError(f"POSEGEN_FAULTS item {item!r} must look like ERROR_TYPE=fraction")
        try:
            error_type = ErrorType(name.strip())
        except ValueError:
            allowed = ", ".join(e.value for e in ErrorType)
            raise SettingsError(
                f"POSEGEN_FAULTS names unknown error type {name!r}; use one of {allowed}"
            ) from None
        value = _finite(f"POSEGEN_FAULTS {name}", fraction.strip())
        if not 0.0 <= value <= 1.0:
            raise SettingsError(f"POSEGEN_FAULTS value for {name} must be between 0 and 1, got {value}")
        faults[error_type] = value
    if sum(faults.values()) > 1.0 + 1e-9:
        raise SettingsError("POSEGEN_FAULTS fractions add up to more than 1")
    return faults


_HOST_LABEL = re.compile(r"^[a-z0-9*](?:[a-z0-9*-]{0,61}[a-z0-9*])?$")


def parse_host_patterns(name: str, raw: str) -> tuple[str, ...]:
    """``FLUX_API_HOSTS``-style lists: ``api.bfl.ai, api.*.bfl.ai, 10.0.0.7``. Each entry is a host name, an IP
    address, or a pattern whose ``*`` stands for part of one label; the last two labels are always spelled
    out, so no entry covers a whole top-level domain or every host of a registrable one."""
    import ipaddress

    entries: list[str] = []
    for item in (part.strip().lower().rstrip(".") for part in raw.split(",")):
        if not item:
            continue
        try:
            entries.append(str(ipaddress.ip_address(item.strip("[]"))))
            continue
        except ValueError:
            pass
        labels = item.split(".")
        if not all(_HOST_LABEL.match(label) for label in labels):
            raise SettingsError(f"{name} entry {item!r} is not a host name, an IP address or a pattern such as "
                                "api.*.bfl.ai")
        if "*" in "".join(labels[-2:]):
            raise SettingsError(f"{name} entry {item!r} has a * in its last two labels; spell out the domain")
        entries.append(item)
    return tuple(entries)


def parse_latency(raw: str) -> LatencyRange:
    """Parse ``POSEGEN_LOCAL_LATENCY``: seconds per pose, ``2`` or a range ``0.5-3``."""
    raw = raw.strip()
    if not raw:
        return LatencyRange()
    low_text, sep, high_text = raw.partition("-")
    try:
        low = float(low_text)
        high = float(high_text) if sep else low
    except ValueError:
        raise SettingsError(
            f"POSEGEN_LOCAL_LATENCY={raw!r} must be seconds (e.g. 2) or a range (e.g. 0.5-3)"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SettingsError(f"POSEGEN_LOCAL_LATENCY={raw!r} must be finite seconds")
    if low < 0 or high < low:
        raise SettingsError(f"POSEGEN_LOCAL_LATENCY={raw!r} must be non-negative with low <= high")
    return LatencyRange(low, high)
