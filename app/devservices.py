"""Local PostgreSQL and Redis for ``make dev`` and ``make test``, started only when none is reachable.

One piece of code for both commands: :func:`local_services` checks the URLs,
installs the Debian packages when their binaries are missing and we are root
(otherwise says exactly what to install), starts servers under a data folder,
and stops what it started on exit.

``python -m app.devservices run -- CMD ...`` runs a command with the services up.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg


class ServiceError(RuntimeError):
    """A local service could not be started; the message says what to do."""


def _say(message: str) -> None:
    print(f"[posegen dev] {message}", file=sys.stderr, flush=True)


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServiceError(f"missing programs: install the Debian packages {' '.join(packages)} "
                           f"(sudo apt-get install -y {' '.join(packages)}), then run again")
    _say(f"installing {' '.join(packages)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


def ensure_tools(binaries: dict[str, str]) -> None:
    """Install the Debian package of each missing binary (``{binary: package}``)."""
    missing = sorted({pkg for binary, pkg in binaries.items() if not shutil.which(binary)})
    if missing:
        _apt_install(missing)


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def postgres_reachable(database_url: str) -> bool:
    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres", connect_timeout=2)
    try:
        with psycopg.connect(admin):
            return True
    except psycopg.OperationalError:
        return False


def redis_reachable(redis_url: str) -> bool:
    parts = urlsplit(redis_url)
    return _port_open(parts.hostname or "127.0.0.1", parts.port or 6379)


def _as_postgres_user(command: list[str]) -> list[str]:
    # The server refuses to run as root; the Debian package creates a 'postgres' user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def start_postgres(database_url: str, data_dir: Path) -> Path:
    """Start a throwaway cluster with trust auth on the URL's port; returns its data folder."""
    parts = urlsplit(database_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    if host not in ("127.0.0.1", "localhost"):
        raise ServiceError(f"PostgreSQL at {host}:{port} is unreachable and not local: start it, or fix DATABASE_URL")
    if not (_postgres_bin("initdb") and _postgres_bin("pg_ctl")):
        _apt_install(["postgresql"])
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise ServiceError("initdb/pg_ctl not found after installing postgresql")
    cluster = data_dir / "postgres"
    sockets = data_dir / "postgres-run"
    for folder in (data_dir, cluster, sockets):
        folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(cluster, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
        os.chmod(data_dir, 0o755)
    if not (cluster / "PG_VERSION").exists():
        _say(f"initialising a PostgreSQL cluster in {cluster}")
        user = parts.username or "postgres"
        subprocess.run(_as_postgres_user([initdb, "-D", str(cluster), "-U", user, "--auth=trust", "-E", "UTF8"]),
                       check=True, stdout=subprocess.DEVNULL)
    _say(f"starting PostgreSQL on {host}:{port}")
    subprocess.run(
        _as_postgres_user([pg_ctl, "-D", str(cluster), "-l", str(cluster / "server.log"), "-w", "-t", "30",
                           "-o", f"-p {port} -h 127.0.0.1 -k {sockets}", "start"]),
        check=True, stdout=subprocess.DEVNULL,
    )
    return cluster


def stop_postgres(cluster: Path) -> None:
    pg_ctl = _postgres_bin("pg_ctl")
    if pg_ctl:
        subprocess.run(_as_postgres_user([pg_ctl, "-D", str(cluster), "-m", "fast", "-w", "stop"]),
                       check=False, stdout=subprocess.DEVNULL)


def start_redis(redis_url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    parts = urlsplit(redis_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if host not in ("127.0.0.1", "localhost"):
        raise ServiceError(f"Redis at {host}:{port} is unreachable and not local: start it, or fix REDIS_URL")
    if not shutil.which("redis-server"):
        _apt_install(["redis-server"])
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    _say(f"starting Redis on {host}:{port}")
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--logfile", str(folder / "redis.log")],
    )
    deadline = time.monotonic() + 15
    while not _port_open("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise ServiceError(f"redis-server did not start; see {folder / 'redis.log'}")
        time.sleep(0.1)
    return process


@contextmanager
def local_services(database_url: str, redis_url: str, data_dir: Path) -> Iterator[list[str]]:
    """Make PostgreSQL and Redis reachable for the block; yields the names of those started here."""
    started: list[str] = []
    cluster: Path | None = None
    redis_process: subprocess.Popen[bytes] | None = None
    try:
        if not postgres_reachable(database_url):
            cluster = start_postgres(database_url, data_dir)
            started.append("postgresql")
        if not redis_reachable(redis_url):
            redis_process = start_redis(redis_url, data_dir)
            started.append("redis")
        yield started
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(timeout=10)
        if cluster is not None:
            stop_postgres(cluster)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "run" or args[1] != "--":
        print("usage: python -m app.devservices run -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    database_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    data_dir = Path(os.environ.get("POSEGEN_DATA_DIR", ".data")).resolve()
    try:
        with local_services(database_url, redis_url, data_dir):
            return subprocess.call(args[2:])
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
