"""The posegen command line: help, tokens, migrations, and settings errors that name the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import jwt

from app.domain.pose_library import LIBRARY
from tests.stack import ROOT, create_database, database_url, drop_database


def posegen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_every_subcommand_has_help() -> None:
    for command in ("api", "worker", "exporter", "migrate", "seed", "token", "dev", "dashboards"):
        result = posegen(command, "--help")
        assert result.returncode == 0, result.stderr
        assert "usage: posegen" in result.stdout


def test_token_is_alone_on_the_last_line_and_valid() -> None:
    result = posegen("token", "--user", "alice", "--role", "ADMIN", "--ttl", "120",
                     env={"JWT_SECRET": "cli-test-secret-long-enough-for-hs256"})
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    claims = jwt.decode(token, "cli-test-secret-long-enough-for-hs256", algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["role"] == "ADMIN"
    assert claims["exp"] - claims["iat"] == 120


def test_bad_setting_stops_with_one_line_naming_the_variable() -> None:
    for env, name in (({"POSEGEN_PROVIDER": "magic"}, "POSEGEN_PROVIDER"),
                      ({"POSEGEN_FAULTS": "FLUX_API_ERROR=2"}, "POSEGEN_FAULTS"),
                      ({"POSEGEN_FAULTS": "NOPE_ERROR=0.1"}, "POSEGEN_FAULTS"),
                      ({"POSEGEN_LOCAL_LATENCY": "3-1"}, "POSEGEN_LOCAL_LATENCY"),
                      ({"POSEGEN_PRICE_PER_POSE": "free"}, "POSEGEN_PRICE_PER_POSE"),
                      ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
                      ({"POSEGEN_PROVIDER": "flux", "FLUX_API_KEY": ""}, "FLUX_API_KEY")):
        result = posegen("worker", env=env)
        assert result.returncode == 2, (env, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0], (env, result.stderr)


def test_migrate_and_seed_are_idempotent() -> None:
    name = "posegen_cli_" + os.urandom(4).hex()
    create_database(name)
    try:
        env = {"DATABASE_URL": database_url(name)}
        first = posegen("migrate", env=env)
        assert first.returncode == 0 and "applied: 001_core" in first.stdout, first.stderr
        again = posegen("migrate", env=env)
        assert again.returncode == 0 and "up to date" in again.stdout
        for _ in range(2):
            seeded = posegen("seed", env=env)
            assert seeded.returncode == 0 and f"{len(LIBRARY)} poses" in seeded.stdout, seeded.stderr
    finally:
        drop_database(name)


def test_api_refuses_a_shutdown_delay_with_several_server_processes() -> None:
    """uvicorn's supervisor passes SIGTERM straight to its processes, which would stop at once: the delay needs one
    server process per command, and `posegen api --workers 2` with it stops with one line naming the setting."""
    result = posegen("api", "--workers", "2", "--port", "1", env={"POSEGEN_SHUTDOWN_DELAY_SECONDS": "5"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "POSEGEN_SHUTDOWN_DELAY_SECONDS=5" in lines[0] and "--workers 2" in lines[0], lines
    bad = posegen("api", env={"POSEGEN_SHUTDOWN_DELAY_SECONDS": "301"})
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: POSEGEN_SHUTDOWN_DELAY_SECONDS='301' must be at most 300.0"
