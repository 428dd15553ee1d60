"""Settings say what they do: every variable is documented, numbers are finite, production refuses unsafe keys.

The variables are learned from the settings object itself (:meth:`Settings.variables`), so a setting added
later is covered by these tests without editing them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import DEV_JWT_SECRET, Settings, SettingsError
from tests.stack import ROOT

NUMERIC_KINDS = {"number", "integer", "faults", "latency"}
NUMERIC = sorted(name for name, kind in Settings.variables().items() if kind in NUMERIC_KINDS)
NON_FINITE = ("nan", "inf", "-inf", "NaN", "Infinity")
GOOD_SECRET = "a-production-secret-of-at-least-32-bytes-0123"


def _non_finite_value(name: str, text: str) -> str:
    return f"FLUX_API_ERROR={text}" if Settings.variables()[name] == "faults" else text


def _posegen(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``posegen`` as an operator runs it, with only ``env`` (and PATH) set."""
    return _posegen_all([(list(args), env)])[0]


def _posegen_all(runs: list[tuple[list[str], dict[str, str]]]) -> list[subprocess.CompletedProcess[str]]:
    """Several ``posegen`` commands at once (each a real process start), their results in order."""
    started = [(argv, subprocess.Popen([sys.executable, "-m", "app.cli", *argv], cwd=ROOT, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       env={"PATH": os.environ["PATH"], **env}))
               for argv, env in runs]
    results = []
    for argv, process in started:
        try:
            stdout, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        results.append(subprocess.CompletedProcess(argv, process.returncode, stdout, stderr))
    return results


def test_numeric_settings_are_found_by_introspection() -> None:
    # The list the other tests walk: if this shrinks, they test less.
    assert {"POSEGEN_LEASE_SECONDS", "POSEGEN_MAX_POSES", "POSEGEN_RATE_LIMIT_PER_MINUTE", "FLUX_TIMEOUT_SECONDS",
            "SENTRY_TRACES_SAMPLE_RATE", "POSEGEN_FAULTS", "POSEGEN_LOCAL_LATENCY"} <= set(NUMERIC)


@pytest.mark.parametrize("name", NUMERIC)
def test_every_numeric_setting_refuses_nan_and_infinities(name: str) -> None:
    for text in NON_FINITE:
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({name: _non_finite_value(name, text)})
        message = str(refused.value)
        assert name in message and "\n" not in message, message


def test_a_worker_with_any_non_finite_setting_refuses_to_start() -> None:
    runs = [(["worker", "--metrics-port", "0"], {name: _non_finite_value(name, "nan")}) for name in NUMERIC]
    for name, result in zip(NUMERIC, _posegen_all(runs), strict=True):
        assert result.returncode == 2, (name, result.stdout + result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], (name, result.stderr)


def test_production_refuses_to_start_without_a_real_jwt_secret() -> None:
    cases = [(None, "not set"), ("", "not set"), (DEV_JWT_SECRET, "development secret"), ("short-secret", "12 bytes")]
    runs = [(command, {"POSEGEN_ENV": "production"} | ({} if secret is None else {"JWT_SECRET": secret}))
            for command in (["api", "--port", "0"], ["worker", "--metrics-port", "0"]) for secret, _ in cases]
    for (command, env), result in zip(runs, _posegen_all(runs), strict=True):
        problem = dict(cases)[env.get("JWT_SECRET")]
        assert result.returncode == 2, (command, env, result.stdout + result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "JWT_SECRET" in lines[0] and problem in lines[0], (command, result.stderr)
        assert not env.get("JWT_SECRET") or env["JWT_SECRET"] not in result.stderr


def test_production_accepts_a_long_random_secret_and_token_prints_no_warnings() -> None:
    result = _posegen("token", "--user", "alice", POSEGEN_ENV="production", JWT_SECRET=GOOD_SECRET)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.strip().splitlines()[-1].count(".") == 2


def test_development_token_says_once_that_a_short_secret_would_be_refused() -> None:
    default = _posegen("token", "--user", "alice")
    assert default.returncode == 0 and default.stderr == "", default.stderr
    short = _posegen("token", "--user", "alice", JWT_SECRET="short-secret")
    assert short.returncode == 0
    assert short.stderr.strip().splitlines() == [
        "warning: JWT_SECRET is 12 bytes; HS256 needs a secret of at least 32 bytes "
        "(would be refused with POSEGEN_ENV=production)"
    ]
    assert "InsecureKeyLengthWarning" not in short.stderr


def test_compose_requires_a_jwt_secret() -> None:
    compose = (ROOT / "deploy" / "docker-compose.yml").read_text()
    assert re.search(r"^\s+JWT_SECRET: \$\{JWT_SECRET:\?[^}]+\}\s*$", compose, re.MULTILINE), \
        "deploy/docker-compose.yml must require JWT_SECRET (${JWT_SECRET:?message})"
    assert DEV_JWT_SECRET not in compose and "dev-secret-change-me" not in compose


def _documented_configuration_variables() -> list[str]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("<!-- generated: settings table -->\n", 1)[1].split("<!-- end generated -->", 1)[0]
    names: list[str] = []
    for row in section.splitlines():
        if row.startswith("| `"):
            first_cell = row.split("|")[1]
            names += re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell)
    return names


def test_readme_configuration_table_lists_exactly_the_settings_read() -> None:
    """docs/configuration.md's table (between its generated markers) names exactly the variables read."""
    documented = _documented_configuration_variables()
    assert len(documented) == len(set(documented)), "a variable is listed twice"
    assert set(documented) == set(Settings.variables()), (
        f"missing from docs/configuration.md: {sorted(set(Settings.variables()) - set(documented))}; "
        f"documented but never read: {sorted(set(documented) - set(Settings.variables()))}"
    )


BAD_URLS = [
    ("REDIS_URL", "redis://127.0.0.1:6379/abc", "database number"),
    ("REDIS_URL", "redis://127.0.0.1:6379/0 ", "whitespace"),
    ("REDIS_URL", "redis://127.0.0.1:99999/0", "ort out of range"),
    ("REDIS_URL", "redis://127.0.0.1:0/0", "invalid port 0"),
    ("REDIS_URL", "redis://[::1/0", "Invalid IPv6 URL"),
    ("REDIS_URL", "redis://127.0.0.1:6379/0?db=x", "Invalid value for 'db'"),
    ("REDIS_URL", "redis://127.0.0.1:6379/0?socket_timeout=abc", "Invalid value for 'socket_timeout'"),
    ("DATABASE_URL", "postgresql://postgres@[::1/posegen", "IPv6"),
    ("REDIS_URL", "redis://:6379/0", "no host"),
    ("DATABASE_URL", "postgresql://postgres@127.0.0.1:54x32/posegen", "invalid port"),
    ("DATABASE_URL", " postgresql://postgres@127.0.0.1/posegen", "must start with"),
    ("FLUX_BASE_URL", "https://", "no host"),
    ("POSEGEN_PUBLIC_BASE_URL", "https://posegen.example.com ", "whitespace"),
    ("POSEGEN_PUBLIC_BASE_URL", "posegen.example.com", "must start with"),
    ("SUPABASE_URL", "https://project.supabase.co\t", "whitespace"),
    ("POSEGEN_GRAFANA_URL", "https://grafana.example.com:0", "invalid port 0"),
    ("SENTRY_DSN", "key@o1.ingest.sentry.io/2", "must start with"),
]


@pytest.mark.parametrize(("name", "value", "reason"), BAD_URLS, ids=[f"{n}={v!r}" for n, v, _ in BAD_URLS])
def test_a_malformed_url_is_refused_in_one_line_naming_it(name: str, value: str, reason: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({name: value})
    message = str(refused.value)
    assert message.startswith(f"{name}=") and reason in message and "\n" not in message, message


def test_the_usual_url_forms_are_accepted() -> None:
    settings = Settings.from_env({
        "REDIS_URL": "rediss://:secret@redis.internal:6380/2", "DATABASE_URL":
        "postgresql://app:pw@db.internal:5433/posegen?sslmode=require", "POSEGEN_PUBLIC_BASE_URL":
        "https://posegen.example.com/", "SUPABASE_URL": "https://project.supabase.co"})
    assert settings.redis_url.endswith("/2") and settings.public_base_url == "https://posegen.example.com"
    assert Settings.from_env({"REDIS_URL": "unix:///run/redis/redis.sock?db=1"}).redis_url.startswith("unix://")
    assert Settings.from_env({"REDIS_URL": "redis://127.0.0.1"}).redis_url == "redis://127.0.0.1"
    assert Settings.from_env({"REDIS_URL": "redis://[::1]:6379/0"}).redis_url == "redis://[::1]:6379/0"
    # libpq's own forms: a unix socket directory as host= (or no host at all), several hosts.
    for url in ("postgresql:///posegen?host=/var/run/postgresql", "postgresql://postgres@/posegen",
                "postgresql://h1:5432,h2:5433/posegen?target_session_attrs=read-write"):
        assert Settings.from_env({"DATABASE_URL": url}).database_url == url


def test_a_worker_with_a_malformed_redis_url_refuses_to_start_in_one_line() -> None:
    (result,) = _posegen_all([(["worker", "--metrics-port", "0"], {"REDIS_URL": "redis://127.0.0.1:6379/abc"})])
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: REDIS_URL="), result.stderr


BAD_SENTINELS = [
    ({"REDIS_SENTINELS": "10.0.0.1:26379"}, "REDIS_SENTINELS is set without REDIS_SENTINEL_MASTER"),
    ({"REDIS_SENTINEL_MASTER": "posegen"}, "REDIS_SENTINEL_MASTER is set without REDIS_SENTINELS"),
    ({"REDIS_SENTINEL_PASSWORD": "pw"}, "REDIS_SENTINEL_PASSWORD is set without"),
    ({"REDIS_SENTINELS": "10.0.0.1", "REDIS_SENTINEL_MASTER": "posegen"}, "entry '10.0.0.1' is not host:port"),
    ({"REDIS_SENTINELS": "10.0.0.1:26379,:26380", "REDIS_SENTINEL_MASTER": "posegen"}, "entry ':26380'"),
    ({"REDIS_SENTINELS": "10.0.0.1:0", "REDIS_SENTINEL_MASTER": "posegen"}, "port 1-65535"),
    ({"REDIS_SENTINELS": "10.0.0.1:26379x", "REDIS_SENTINEL_MASTER": "posegen"}, "not host:port"),
    ({"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_SENTINEL_MASTER": "pose gen"}, "not a Sentinel master name"),
    # An IPv6 address without brackets: is "::1:26379" the host ::1 on 26379, or ::1:26379 on no port?
    ({"REDIS_SENTINELS": "::1:26379", "REDIS_SENTINEL_MASTER": "posegen"}, "an IPv6 address in brackets"),
    ({"REDIS_SENTINELS": "fe80::1%eth0:26379", "REDIS_SENTINEL_MASTER": "posegen"}, "not host:port"),
    # Digits int() takes but no socket does: full-width, Arabic-Indic.
    ({"REDIS_SENTINELS": "10.0.0.1:\uff12\uff16\uff13\uff17\uff19", "REDIS_SENTINEL_MASTER": "posegen"},
     "not host:port"),
    ({"REDIS_SENTINELS": "10.0.0.1:\u0662\u0666\u0663\u0667\u0669", "REDIS_SENTINEL_MASTER": "posegen"},
     "not host:port"),
    ({"REDIS_SENTINELS": "10.0.0.1:+26379", "REDIS_SENTINEL_MASTER": "posegen"}, "not host:port"),
    ({"REDIS_SENTINELS": "10.0.0.1:99999", "REDIS_SENTINEL_MASTER": "posegen"}, "port 1-65535"),
    ({"REDIS_SENTINELS": "user@10.0.0.1:26379", "REDIS_SENTINEL_MASTER": "posegen"}, "not host:port"),
    ({"REDIS_SENTINELS": "s\u00e9ntinel:26379", "REDIS_SENTINEL_MASTER": "posegen"}, "not host:port"),
    ({"REDIS_SENTINELS": "10.0.0.1:26379,10.0.0.1:26379", "REDIS_SENTINEL_MASTER": "posegen"}, "twice"),
    ({"REDIS_SENTINELS": "10.0.0.1:26379,", "REDIS_SENTINEL_MASTER": "posegen"}, "entry ''"),
    # Names a sentinel.conf or a SENTINEL command cannot spell unquoted, and control characters.
    ({"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_SENTINEL_MASTER": "pose\u200bgen"}, "not a Sentinel master name"),
    ({"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_SENTINEL_MASTER": "pose\"gen"}, "not a Sentinel master name"),
    ({"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_SENTINEL_MASTER": "pose\x00gen"}, "not a Sentinel master name"),
    ({"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_SENTINEL_MASTER": "p" * 256}, "not a Sentinel master name"),
    ({"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_SENTINEL_MASTER": "posegen",
      "REDIS_URL": "unix:///run/redis.sock"}, "REDIS_URL is a unix:// socket"),
]


@pytest.mark.parametrize(("env", "reason"), BAD_SENTINELS, ids=[str(e) for e, _ in BAD_SENTINELS])
def test_a_half_or_malformed_sentinel_setting_is_refused_in_one_line(env: dict[str, str], reason: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)
    message = str(refused.value)
    assert reason in message and "\n" not in message, message


def test_sentinels_are_read_with_the_master_name_and_the_urls_database_and_password() -> None:
    from app.connections import redis_client

    settings = Settings.from_env({"REDIS_SENTINELS": " s1.internal:26379, [::1]:26380 ,10.0.0.3:5000",
                                  "REDIS_SENTINEL_MASTER": "posegen", "REDIS_URL": "redis://:pw@ignored:1/3"})
    assert settings.redis_sentinel is not None
    assert settings.redis_sentinel.sentinels == (("s1.internal", 26379), ("::1", 26380), ("10.0.0.3", 5000))
    assert Settings.from_env({}).redis_sentinel is None
    client = redis_client(settings.redis_url, sentinel=settings.redis_sentinel)
    pool = client.connection_pool
    assert pool.service_name == "posegen"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (3, "pw")


def test_a_rediss_url_keeps_its_tls_options_for_the_master_sentinel_names() -> None:
    """With Sentinel the URL's host is not used, but its TLS is: the master's connections are TLS connections
    with the URL's ``ssl_*`` options (a CA bundle, the certificate checks), in the sync and asyncio clients."""
    from redis.asyncio.sentinel import SentinelManagedSSLConnection as AsyncSSLConnection
    from redis.sentinel import SentinelManagedSSLConnection

    from app.connections import async_redis_client, redis_client

    url = "rediss://:pw@ignored:1/2?ssl_ca_certs=/etc/posegen/redis-ca.pem&ssl_cert_reqs=required"
    settings = Settings.from_env({"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_SENTINEL_MASTER": "posegen",
                                  "REDIS_URL": url})
    for client, connection_class in ((redis_client(settings.redis_url, sentinel=settings.redis_sentinel),
                                      SentinelManagedSSLConnection),
                                     (async_redis_client(settings.redis_url, sentinel=settings.redis_sentinel),
                                      AsyncSSLConnection)):
        pool = client.connection_pool
        assert issubclass(pool.connection_class, connection_class), pool.connection_class
        options = pool.connection_kwargs
        assert (options["ssl_ca_certs"], options["ssl_cert_reqs"], options["db"]) == (
            "/etc/posegen/redis-ca.pem", "required", 2)


def test_the_worker_metrics_endpoints_client_finds_the_master_through_sentinel() -> None:
    """The endpoint reads the timing hashes the horses flush to the master: with Sentinel, REDIS_URL's host is
    not the master (it may resolve nowhere, or to a replica that never gets the flushes)."""
    from app.worker.loop import metrics_redis

    settings = Settings.from_env({"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_SENTINEL_MASTER": "posegen",
                                  "REDIS_URL": "redis://:pw@ignored:1/3"})
    pool = metrics_redis(settings).connection_pool
    assert getattr(pool, "service_name", None) == "posegen", type(pool)
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["socket_timeout"]) == (3, 1.0)


def test_every_redis_client_the_processes_build_passes_the_sentinel_setting() -> None:
    """Each ``redis_client``/``async_redis_client`` call in app/ and exporter/ states ``sentinel=``: a client
    built without it talks to REDIS_URL's host, which with Sentinel is not the master."""
    missing = []
    for path in [*(ROOT / "app").rglob("*.py"), *(ROOT / "exporter").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("redis_client", "async_redis_client")
                    and "sentinel" not in {k.arg for k in node.keywords}):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not missing, missing


def test_a_worker_with_half_a_sentinel_setting_refuses_to_start_in_one_line() -> None:
    (result,) = _posegen_all([(["worker", "--metrics-port", "0"], {"REDIS_SENTINELS": "127.0.0.1:26379"})])
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "REDIS_SENTINEL_MASTER" in lines[0], result.stderr


def test_compose_publishes_only_the_api_beyond_this_host_and_requires_grafanas_password() -> None:
    """The exporter, Prometheus and Alertmanager answer without authentication: published on 127.0.0.1 unless
    POSEGEN_MONITORING_BIND says otherwise; Grafana has no default admin password."""
    import yaml

    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    for name, ports in published.items():
        for port in ports:
            if name == "api":
                continue
            assert str(port).startswith("${POSEGEN_MONITORING_BIND:-127.0.0.1}:"), (name, port)
    assert published["api"], "the API is published"
    password = compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?"), password


PRODUCTION = {"POSEGEN_ENV": "production", "JWT_SECRET": GOOD_SECRET}


def test_production_refuses_placeholder_secrets_and_plain_http_each_in_one_line() -> None:
    """Fail closed: a secret that is long enough but a pattern or a template's placeholder, and an http:// URL to
    another host for the provider, the storage or the public base URL, stop start-up naming the variable."""
    cases = [
        ({"JWT_SECRET": "a" * 32}, "JWT_SECRET", "distinct characters"),
        ({"JWT_SECRET": "ab" * 24}, "JWT_SECRET", "distinct characters"),
        ({"JWT_SECRET": "CHANGE-ME-CHANGE-ME-CHANGE-ME-CHANGE-ME"}, "JWT_SECRET", "placeholder"),
        ({"JWT_SECRET": "replace_me_with_a_real_secret_0123456789"}, "JWT_SECRET", "placeholder"),
        ({"JWT_SECRET": "0123456789abcdef0123456789abcdef"}, "JWT_SECRET", "repeats"),
        ({"JWT_SECRET": "your-256-bit-secret-your-256-bit-secret"}, "JWT_SECRET", "placeholder"),
        ({"JWT_SECRET": "Kq8#zP2vLm9!xR4t" * 3}, "JWT_SECRET", "repeats"),
        ({"FLUX_BASE_URL": "http://api.bfl.ai"}, "FLUX_BASE_URL", "plain http"),
        ({"STORAGE_BACKEND": "supabase", "SUPABASE_URL": "http://abc.supabase.co", "SUPABASE_SERVICE_KEY": "k" * 40},
         "SUPABASE_URL", "plain http"),
        ({"POSEGEN_PUBLIC_BASE_URL": "http://posegen.example.com"}, "POSEGEN_PUBLIC_BASE_URL", "plain http"),
    ]
    runs = [(["worker", "--metrics-port", "0"], {**PRODUCTION, **env}) for env, _, _ in cases]
    for (env, name, problem), result in zip(cases, _posegen_all(runs), strict=True):
        assert result.returncode == 2, (env, result.stdout + result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and problem in lines[0], (env, result.stderr)
    for env in ({"FLUX_BASE_URL": "http://127.0.0.1:8099"}, {"POSEGEN_PUBLIC_BASE_URL": "https://posegen.example.com"}):
        Settings.from_env({**PRODUCTION, **env})  # TLS, or a loopback address nothing can intercept: accepted


def test_start_up_errors_never_print_a_password() -> None:
    cases = [{"DATABASE_URL": "postgresql://u:SuperSecretPW@db.internal:99999/posegen"},
             {"REDIS_URL": "redis://:SuperSecretPW@cache.internal:0/0"},
             {"REDIS_URL": "redis://default:SuperSecretPW@cache.internal:6379/not-a-db"},
             {"DATABASE_URL": "postgresql://db.internal/posegen?password=SuperSecretPW&port=0"},
             {"SENTRY_DSN": "https://key:SuperSecretPW@sentry.internal:99999/1"},
             {"DATABASE_URL": "postgresql://u:SuperSecretPW%ZZ@127.0.0.1/db"},  # the parser quotes the password
             {"DATABASE_URL": "postgresql://u:p@SuperSecretPW@127.0.0.1:zz/db"},  # an unencoded '@' in it
             {"REDIS_URL": "redis://u:Super%40SecretPW@127.0.0.1:0/0"}]
    results = _posegen_all([(["worker", "--metrics-port", "0"], env) for env in cases])
    for env, result in zip(cases, results, strict=True):
        assert result.returncode == 2, (env, result.stderr)
        assert "SuperSecretPW" not in result.stdout + result.stderr and "***" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_builtin_key_serves_this_machine_only_and_is_announced_on_every_start(tmp_path: Path) -> None:
    """Without JWT_SECRET anyone could sign an ADMIN token with the key written in app/settings.py: an API bound
    beyond loopback refuses to start; every service start that uses the key logs a WARN entry."""
    wide = _posegen_all([(["api", "--host", host, "--port", "0"], {}) for host in ("0.0.0.0", "::", "example.com")])
    for result in wide:
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "JWT_SECRET is not set" in lines[0] and "beyond this machine" in lines[0], lines
    with socket.socket() as busy:  # the exporter cannot bind it and exits after its start-up lines
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        exporter = _posegen("exporter", "--port", str(busy.getsockname()[1]))
    entries = [json.loads(line) for line in exporter.stdout.splitlines() if line.startswith("{")]
    assert any(e["level"] == "WARN" and "built-in development key" in e["message"] for e in entries), \
        exporter.stdout + exporter.stderr


def test_token_and_console_session_lifetimes_are_bounded() -> None:
    """A token's maximum lifetime and the console's timeouts have defaults and bounds, and an idle timeout
    longer than the session itself is a mistake said in one line."""
    settings = Settings.from_env({})
    assert (settings.token_max_ttl_seconds, settings.console_idle_timeout_seconds,
            settings.console_session_max_seconds) == (86400, 900, 28800)
    for name, value, problem in (("POSEGEN_TOKEN_MAX_TTL_SECONDS", "59", "at least 60"),
                                 ("POSEGEN_TOKEN_MAX_TTL_SECONDS", str(30 * 86400 + 1), "at most"),
                                 ("POSEGEN_CONSOLE_IDLE_TIMEOUT_SECONDS", "0", "at least 60"),
                                 ("POSEGEN_CONSOLE_SESSION_MAX_SECONDS", str(7 * 86400 + 1), "at most"),
                                 ("POSEGEN_CONSOLE_SESSION_MAX_SECONDS", "600", "longer than")):
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({name: value})
        message = str(refused.value)
        assert name in message and problem in message and "\n" not in message, message
    assert Settings.from_env({"POSEGEN_CONSOLE_IDLE_TIMEOUT_SECONDS": "300",
                              "POSEGEN_CONSOLE_SESSION_MAX_SECONDS": "3600"}).console_session_max_seconds == 3600
