"""Running `make dev` and `posegen dev` as a user does: a clean environment, the banner, a 0700 folder."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg
from psycopg import sql

from app.db.privileges import dev_app_role
from tests.stack import database_url

SECRET = "dev-stack-test-secret-long-enough"


def dev_env(**overrides: str) -> dict[str, str]:
    """Our environment without the make variables of `make dev` (a test sets the ones it means)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("API_HOST", "API_PORT", "EXPORTER_PORT", "WORKER_METRICS_PORT", "WORKERS", "MAKEFLAGS")}
    return {**env, "JWT_SECRET": SECRET, "PYTHONUNBUFFERED": "1", **overrides}


def wait_for_banner(process: subprocess.Popen[bytes], log_path: Path, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while "Press Ctrl-C" not in log_path.read_text(errors="replace"):
        assert process.poll() is None, f"exited {process.returncode} before the banner:\n{log_path.read_text()}"
        assert time.monotonic() < deadline, f"no banner within {timeout} s:\n{log_path.read_text()}"
        time.sleep(0.2)
    return log_path.read_text(errors="replace")


def banner_lines(output: str) -> list[str]:
    lines = output.splitlines()
    first = next(i for i, line in enumerate(lines) if " is up " in line)
    last = next(i for i, line in enumerate(lines) if "Press Ctrl-C" in line)
    return lines[first:last + 1]


def admin_token(output: str) -> str:
    lines = banner_lines(output)
    token = lines[lines.index(next(line for line in lines if "Admin token" in line)) + 1].strip()
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", token)
    return token


def answers(port: int) -> bool:
    with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@contextmanager
def private_folder() -> Iterator[Path]:
    """A 0700 folder, like root's home or ``mktemp -d``: the postgres user cannot enter it."""
    folder = Path(tempfile.mkdtemp(prefix="posegen-fresh-"))
    assert folder.stat().st_mode & 0o777 == 0o700
    try:
        yield folder
    finally:
        cluster = folder / ".data" / "postgres"
        if cluster.is_symlink():  # root's cluster lives outside the folder; remove the one this test made
            outside = cluster.resolve().parent
            assert outside.name.startswith("posegen-") and outside.parent == Path("/var/tmp")
            shutil.rmtree(outside, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


def drop_dev_role(db_name: str) -> None:
    """Drop the application's role `posegen dev` created for the stack on database ``db_name`` (``<db>_app``,
    app/devstack.py), once that database, where it held its privileges, has been dropped."""
    with psycopg.connect(database_url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(dev_app_role(database_url(db_name)))))
