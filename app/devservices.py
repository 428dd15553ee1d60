"""Local PostgreSQL and Redis for ``make dev`` and ``make test``, started only when nothing listens at their URLs.

One piece of code for both commands: :func:`local_services` checks the URLs,
installs the Debian packages when their binaries are missing and we are root
(otherwise says exactly what to install), starts servers under the data folder,
and stops what it started on exit.

What counts as "no server": nothing accepts a TCP connection at the URL's host
and port. When something does accept, it must be the service the URL names and
let us in; otherwise the start stops with the server's own words (``role "x"
does not exist``, ``Protocol Error``) rather than starting a second server on a
busy port.

PostgreSQL refuses to run as root, so as root it runs as the Debian package's
``postgres`` user. That user must be able to enter the cluster's folder: when it
cannot reach the data folder (a clone inside a 0700 home or ``mktemp -d``
folder), the cluster lives in ``/var/tmp/posegen-<hash of the data folder>/``
(owned by ``postgres``, kept across runs) and ``<data folder>/postgres`` is a
symbolic link to it.

``python -m app.devservices run -- CMD ...`` runs a command with the services up.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit

import psycopg
from redis import Redis
from redis.exceptions import RedisError

from app.db.conninfo import database_problem
from app.settings import Settings, SettingsError

# Where root's clusters go when the postgres user cannot reach the data folder: /var/tmp survives reboots.
EXTERNAL_CLUSTER_ROOT = Path("/var/tmp")
_LOCAL_HOSTS = ("127.0.0.1", "localhost")


class ServiceError(RuntimeError):
    """A local service could not be used or started; the message is one line saying what to do."""


@dataclass
class LocalService:
    """A server started here: its process (our child) and the log that says why it stopped."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    # Words that mark a log line as a problem (the logs also hold routine lines and clients' errors).
    alarm_words: tuple[str, ...]
    log_offset: int = 0

    def skip_logged(self) -> None:
        """Count only what is logged from now on (start-up warnings are not why it stops later)."""
        with suppress(OSError):
            self.log_offset = self.log_path.stat().st_size

    def alarms(self, count: int = 20) -> list[str]:
        """The last problem lines it logged since it was started here."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_offset)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            return []
        return [line for line in lines if any(word in line for word in self.alarm_words)][-count:]


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


def _host_port(url: str, default_port: int) -> tuple[str | None, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port or default_port


def postgres_reachable(database_url: str) -> bool:
    """True when a PostgreSQL at the URL lets us in; False when nothing listens at its host and port.

    Raises ServiceError (the server's words, one line) when something listens but refuses us:
    a wrong role or password, a server that is not PostgreSQL.
    """
    host, port = _host_port(database_url, 5432)
    if host and not host.startswith("/") and not _port_open(host, port):
        return False
    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres", connect_timeout=5)
    try:
        with psycopg.connect(admin):
            return True
    except psycopg.Error as exc:
        raise ServiceError(f"cannot use {database_problem(database_url, exc)}") from None


def redis_reachable(redis_url: str) -> bool:
    """True when a Redis at the URL answers PING; False when nothing listens at its host and port.

    Raises ServiceError when something listens but is not a usable Redis (garbage answers,
    a password it wants, a database index it does not have).
    """
    parts = urlsplit(redis_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if parts.scheme != "unix" and not _port_open(host, port):
        return False
    client = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
        return True
    except RedisError as exc:
        where = parts.path if parts.scheme == "unix" else f"{host}:{port}"
        said = " ".join(str(exc).split()) or type(exc).__name__
        problem = (f"REDIS_URL: the server at {where} is not a usable Redis ({type(exc).__name__}: {said}); "
                   f"point REDIS_URL at a Redis, or at a free port to have one started here")
        raise ServiceError(problem) from None
    finally:
        client.close()


def _server_user() -> pwd.struct_passwd | None:
    """The account the PostgreSQL server runs as: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError("no 'postgres' user to run PostgreSQL as (the server refuses root): "
                           "apt-get install -y postgresql creates it") from None


class _UserArguments(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]


def _as_user(account: pwd.struct_passwd | None) -> _UserArguments:
    """Popen arguments that drop root to ``account`` (its own group, no supplementary groups)."""
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _can_enter(account: pwd.struct_passwd, folder: Path) -> bool:
    # The kernel answers for that user: every parent folder must let it through.
    probe = subprocess.run(["test", "-x", str(folder)], cwd="/", check=False, **_as_user(account))
    return probe.returncode == 0


def postgres_home(data_dir: Path, account: pwd.struct_passwd | None) -> Path:
    """The folder holding the cluster (``postgres/``) and its socket folder (``postgres-run/``).

    The data folder itself when the server's user can enter it, else
    ``/var/tmp/posegen-<12 hex of sha256(data folder)>`` owned by that user.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    link = data_dir / "postgres"
    if account is None or (not link.is_symlink() and _can_enter(account, data_dir)):
        return data_dir
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    home = EXTERNAL_CLUSTER_ROOT / f"posegen-{digest}"
    try:
        home.mkdir(mode=0o700)
        os.chown(home, account.pw_uid, account.pw_gid)
    except FileExistsError:
        found = home.lstat()
        # A world-writable parent: only use a folder that is really ours, not one planted there.
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != account.pw_uid:
            raise ServiceError(f"{home} exists but is not a folder owned by {account.pw_name}: "
                               f"remove it and run again") from None
    if not link.is_symlink():
        if link.is_dir() and not any(link.iterdir()):
            link.rmdir()  # left empty by an earlier run that could not initialise it there
        if not link.exists():
            link.symlink_to(home / "postgres")
    return home


def start_postgres(database_url: str, data_dir: Path) -> LocalService:
    """Start a throwaway trust-auth cluster on the URL's port, as our child; returns it once it accepts us."""
    host, port = _host_port(database_url, 5432)
    if host not in _LOCAL_HOSTS:
        raise ServiceError(f"PostgreSQL at {host or 'the local socket'}:{port} is unreachable and not local: "
                           f"start it, or fix DATABASE_URL")
    if not (_postgres_bin("initdb") and _postgres_bin("postgres")):
        _apt_install(["postgresql"])
    initdb, postgres = _postgres_bin("initdb"), _postgres_bin("postgres")
    if not (initdb and postgres):
        raise ServiceError("initdb/postgres not found after installing postgresql")
    account = _server_user()
    home = postgres_home(data_dir, account)
    cluster, sockets = home / "postgres", home / "postgres-run"
    for folder in (cluster, sockets):
        folder.mkdir(exist_ok=True)
        if account is not None:
            os.chown(folder, account.pw_uid, account.pw_gid)
    user = urlsplit(database_url).username or "postgres"
    if not (cluster / "PG_VERSION").exists():
        _say(f"initialising a PostgreSQL cluster in {cluster}")
        done = subprocess.run([initdb, "-D", str(cluster), "-U", user, "--auth=trust", "-E", "UTF8"],
                              cwd=home, capture_output=True, text=True, check=False, **_as_user(account))  # type: ignore[call-overload]
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ServiceError(f"initdb failed in {cluster}: {said}")
    log_path = data_dir / "postgres.log"  # opened here, so root's folder is fine for a server running as postgres
    _say(f"starting PostgreSQL on {host}:{port} (cluster {cluster}, log {log_path})")
    with open(log_path, "ab") as log:
        offset = log.tell()
        # A session of its own: a Ctrl-C in the terminal stops the app processes first, then us, then it.
        process = subprocess.Popen(
            [postgres, "-D", str(cluster), "-p", str(port), "-h", "127.0.0.1", "-k", str(sockets)],
            cwd=home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            **_as_user(account),
        )
    service = LocalService("PostgreSQL", process, log_path, ("FATAL", "PANIC", "could not"), offset)
    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres", connect_timeout=2)
    return _await_ready(service, port, lambda: psycopg.connect(admin).close(), psycopg.OperationalError, 60)


def start_redis(redis_url: str, data_dir: Path) -> LocalService:
    """Start a ``redis-server`` on the URL's port, as our child, keeping its data in ``<data folder>/redis``.

    It persists (an append-only file, synced every second) like the PostgreSQL cluster beside it: what lives
    in Redis is state too, an operator's intake or worker pause and the queued jobs, and a restart of
    ``make dev`` must not lift a pause nobody resumed."""
    host, port = _host_port(redis_url, 6379)
    if host not in _LOCAL_HOSTS:
        raise ServiceError(f"Redis at {host}:{port} is unreachable and not local: start it, or fix REDIS_URL")
    if not shutil.which("redis-server"):
        _apt_install(["redis-server"])
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "redis.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    _say(f"starting Redis on {host}:{port} (log {log_path})")
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "yes",
         "--appendfsync", "everysec", "--dir", str(folder), "--logfile", str(log_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
    )
    service = LocalService("Redis", process, log_path, (" # ",), offset)
    client = Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        return _await_ready(service, port, client.ping, RedisError, 15)
    finally:
        client.close()


def _await_ready(service: LocalService, port: int, probe: Callable[[], object], not_yet: type[Exception],
                 timeout: float) -> LocalService:
    """Return the service once ``probe`` succeeds; stop it and raise ServiceError if it exits or stays silent.

    Also stopped on Ctrl-C: in a session of its own, the terminal's SIGINT does not reach it.
    """
    deadline = time.monotonic() + timeout
    try:
        while True:
            if service.process.poll() is not None:
                said = last_problem(service.alarms()) or "no output"
                raise ServiceError(f"{service.name} did not start on port {port}: {said} (log {service.log_path})")
            try:
                probe()
            except not_yet as exc:
                if time.monotonic() > deadline:
                    raise ServiceError(f"{service.name} did not answer on port {port} within {timeout:.0f} s: "
                                       f"{' '.join(str(exc).split())} (log {service.log_path})") from None
                time.sleep(0.1)
                continue
            service.skip_logged()
            return service
    except BaseException:
        stop_service(service)
        raise


_TRACEBACK_LAST = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b.*")
_ERROR_WORDS = ("ERROR", "FATAL", "CRITICAL", "PANIC", "error", "Error", "refused", "in use")


def last_problem(lines: list[str]) -> str:
    """The line that best says why a process stopped: an exception line or ERROR log entry, else the last
    line that is not a routine log entry, else "" (a process killed in silence)."""
    for line in reversed(lines):
        text = line.strip()
        if text.startswith("{"):
            try:
                entry = json.loads(text)
            except ValueError:
                entry = None
            if isinstance(entry, dict) and entry.get("level") in ("ERROR", "CRITICAL"):
                error = entry.get("error") or {}
                detail = f": {error.get('type')}: {error.get('message')}" if error else ""
                return _one_line(f"{entry.get('message', '')}{detail}")
            continue
        if _TRACEBACK_LAST.match(text) or any(word in text for word in _ERROR_WORDS):
            return _one_line(text)
    plain = [line for line in lines if line.strip() and not line.lstrip().startswith("{")]
    return _one_line(plain[-1]) if plain else ""


def _one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def stop_service(service: LocalService) -> None:
    """Stop a server started here: SIGINT (PostgreSQL's fast shutdown, Redis' clean exit), then SIGKILL."""
    if service.process.poll() is None:
        service.process.send_signal(signal.SIGINT)
        try:
            service.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()


@contextmanager
def local_services(database_url: str, redis_url: str, data_dir: Path) -> Iterator[list[LocalService]]:
    """Make PostgreSQL and Redis usable for the block; yields the servers started here (stopped on exit).

    Raises ServiceError (one line) when a server at a URL refuses us or one cannot be started.
    """
    with ExitStack() as cleanup:
        started: list[LocalService] = []
        if not postgres_reachable(database_url):
            started.append(start_postgres(database_url, data_dir))
            cleanup.callback(stop_service, started[-1])
        if not redis_reachable(redis_url):
            started.append(start_redis(redis_url, data_dir))
            cleanup.callback(stop_service, started[-1])
        yield started


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "run" or args[1] != "--":
        print("usage: python -m app.devservices run -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with local_services(settings.database_url, settings.redis_url, settings.data_dir.resolve()):
            command = subprocess.Popen(args[2:])
            # The terminal's Ctrl-C reaches the command itself (pytest tears its stacks down); the servers
            # started here are stopped once it has exited.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            code = command.wait()
            return 128 - code if code < 0 else code  # killed by signal N: exit 128 + N, as a shell says it
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130  # the servers started here were stopped on the way out


if __name__ == "__main__":
    sys.exit(main())
