"""Settings.from_env in-process: each malformed value is refused with one line naming its variable."""

from __future__ import annotations

import pytest

from app.errors import ErrorType
from app.settings import DEV_JWT_SECRET, LatencyRange, Settings, SettingsError

GOOD_SECRET = "a-production-secret-of-at-least-32-bytes-0123"


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.price_per_pose, settings.max_attempts, settings.provider) == (30, 3, "local")
    assert settings.jwt_secret == DEV_JWT_SECRET and settings.uses_builtin_jwt_secret
    assert settings.owner_database_url == settings.database_url
    assert not settings.is_production


@pytest.mark.parametrize(("env", "words"), [
    ({"POSEGEN_PRICE_PER_POSE": "abc"}, "POSEGEN_PRICE_PER_POSE='abc' is not a whole number"),
    ({"POSEGEN_PRICE_PER_POSE": "nan"}, "POSEGEN_PRICE_PER_POSE"),
    ({"POSEGEN_MAX_ATTEMPTS": "0"}, "POSEGEN_MAX_ATTEMPTS='0' must be at least 1"),
    ({"FLUX_WEBHOOKS": "maybe"}, "FLUX_WEBHOOKS='maybe' is not a switch"),
    ({"POSEGEN_FAULTS": "NOPE=0.5"}, "POSEGEN_FAULTS names unknown error type 'NOPE'"),
    ({"REDIS_URL": "redis://127.0.0.1:99999/0"}, "REDIS_URL="),
    ({"FLUX_WEBHOOKS": "true"}, "POSEGEN_PUBLIC_BASE_URL"),
])
def test_a_bad_value_is_refused_naming_its_variable(env: dict[str, str], words: str) -> None:
    assert words in refusal(env)


def test_a_refused_url_never_shows_its_password() -> None:
    message = refusal({"DATABASE_URL": "postgresql://u:sekret@h:54x32/db"})
    assert "sekret" not in message and "DATABASE_URL" in message and "54x32" in message


@pytest.mark.parametrize(("url", "words"), [
    ("postgresql://u@db1:5432,db2:5432,db3:5432/posegen?port=5432,5433", "2 ports for 3 hosts"),
    ("postgresql://u@db1,db2/posegen?port=5432,5433,5434", "3 ports for 2 hosts"),
    ("postgresql://u@db1,db2/posegen?hostaddr=10.0.0.1", "2 host names but 1 hostaddr values"),
    ("postgresql://u@db1,db2/posegen?target_session_attrs=readwrite", "target_session_attrs='readwrite'"),
    ("postgresql://u@db1,db2/posegen?load_balance_hosts=yes", "load_balance_hosts='yes'"),
])
def test_a_multi_host_database_url_libpq_would_refuse_at_every_connection_is_refused_at_start(url: str,
                                                                                              words: str) -> None:
    """libpq checks these only when it connects: the API, workers and exporter would start and retry for ever."""
    message = refusal({"DATABASE_URL": url})
    assert message.startswith("DATABASE_URL=") and words in message, message


@pytest.mark.parametrize("url", [
    "postgresql://u@db1:5432,db2:5433/posegen?target_session_attrs=read-write",
    "postgresql://u@db1,db2/posegen?port=5432&load_balance_hosts=random&target_session_attrs=prefer-standby",
    "postgresql://u@db1:5432,:5433/posegen",
    "postgresql://u@/posegen?host=/var/run/postgresql,/tmp",
    "postgresql://u@db1,db2/posegen?hostaddr=10.0.0.1,10.0.0.2&port=5432,5433",
])
def test_multi_host_database_urls_libpq_takes_are_accepted(url: str) -> None:
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url


def test_faults_latency_and_switches_are_parsed() -> None:
    settings = Settings.from_env({"POSEGEN_FAULTS": "FLUX_API_ERROR=0.25,STORAGE_ERROR=0.05",
                                  "POSEGEN_LOCAL_LATENCY": "0.1-0.3", "POSEGEN_MIGRATION_DATABASE_URL": "",
                                  "DD_TRACE_ENABLED": "YES"})
    assert settings.faults == {ErrorType.FLUX_API_ERROR: 0.25, ErrorType.STORAGE_ERROR: 0.05}
    assert settings.local_latency == LatencyRange(0.1, 0.3)
    assert settings.trace_enabled is True


def test_production_refuses_the_builtin_secret_and_accepts_a_long_one() -> None:
    assert "JWT_SECRET is not set" in refusal({"POSEGEN_ENV": "production"})
    assert "JWT_SECRET" in refusal({"POSEGEN_ENV": "production", "JWT_SECRET": DEV_JWT_SECRET})
    settings = Settings.from_env({"POSEGEN_ENV": "Production", "JWT_SECRET": GOOD_SECRET,
                                  "POSEGEN_PUBLIC_BASE_URL": "https://posegen.example.com"})
    assert settings.is_production and not settings.uses_builtin_jwt_secret


def test_a_short_secret_outside_production_is_a_warning_not_a_refusal() -> None:
    settings = Settings.from_env({"JWT_SECRET": "short"})
    assert settings.jwt_secret_warning is not None and "5 bytes" in settings.jwt_secret_warning
    assert Settings.from_env({"JWT_SECRET": GOOD_SECRET}).jwt_secret_warning is None
    assert Settings.from_env({}).jwt_secret_warning is None  # the development default is the default
