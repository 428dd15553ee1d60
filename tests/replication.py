"""Replicated dependencies for failover tests: a Redis master, a replica and three Sentinels, and a PostgreSQL
primary with a streaming standby, each on free ports under a temp folder this run created, stopped at the end.

Only servers started here are ever killed, stopped or promoted; the machine's shared PostgreSQL and Redis are
not touched. PostgreSQL runs as the ``postgres`` user (it refuses root) from a folder that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from redis import Redis
from redis.exceptions import RedisError

from tests.stack import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SENTINEL_MASTER = "posegen"
# Sentinel: a master silent this long is subjectively down; a quorum of 2 of 3 makes it objectively down.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def _wait(condition: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # noqa: BLE001 - polled until the deadline
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise RuntimeError(f"{what} not within {timeout} s (last: {last!r})")


class SentinelRedis:
    """``redis-server`` master and replica, and three sentinels (``redis-server --sentinel``) monitoring them
    as ``posegen``."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="posegen-test-sentinel-"))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def _spawn(self, name: str, argv: Callable[[int], list[str]]) -> int:
        """Start ``argv(port)`` on a free port (five tries: another process may take the port first) and wait
        until it answers PING; the port."""
        for _ in range(5):
            port = free_port()
            process = subprocess.Popen(argv(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait(lambda p=port, proc=process: proc.poll() is None and Redis(port=p, socket_timeout=1).ping(), 10,
                      name)
            except RuntimeError:
                process.kill()
                process.wait()
                continue
            self.processes[name], self.ports[name] = process, port
            return port
        raise RuntimeError(f"{name} did not start; see {self.folder}")

    def _server(self, name: str, *args: str) -> int:
        return self._spawn(name, lambda port: [
            "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(self.folder), "--dbfilename", f"{name}.rdb", "--logfile", str(self.folder / f"{name}.log"),
            *args])

    def _sentinel(self, name: str, master_port: int) -> int:
        def argv(port: int) -> list[str]:
            config = self.folder / f"{name}.conf"  # Sentinel rewrites its configuration: a file of its own
            config.write_text(
                f"bind 127.0.0.1\nport {port}\ndir {self.folder}\nlogfile {self.folder / f'{name}.log'}\n"
                f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SENTINEL_MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SENTINEL_MASTER} 1\n")
            return ["redis-server", str(config), "--sentinel"]  # Sentinel mode of redis-server: no package more

        return self._spawn(name, argv)

    def start(self) -> SentinelRedis:
        master = self._server("master")
        self._server("replica", "--replicaof", "127.0.0.1", str(master))
        _wait(lambda: Redis(port=self.ports["replica"]).info("replication")["master_link_status"] == "up", 20,
              "the replica's link to the master")
        for index in range(3):
            self._sentinel(f"sentinel{index}", master)
        # Every sentinel knows the replica and the other sentinels before anything is killed.
        for index in range(3):
            port = self.ports[f"sentinel{index}"]
            _wait(lambda p=port: (lambda m: int(m["num-slaves"]) >= 1 and int(m["num-other-sentinels"]) >= 2)(
                Redis(port=p, decode_responses=True).sentinel_master(SENTINEL_MASTER)), 30,
                f"sentinel{index} discovering the replica and its peers")
        return self

    @property
    def sentinel_setting(self) -> str:
        """``REDIS_SENTINELS`` for these sentinels."""
        return ",".join(f"127.0.0.1:{self.ports[f'sentinel{i}']}" for i in range(3))

    def master_address(self) -> tuple[str, int]:
        """The master the sentinels name now (the first sentinel that answers)."""
        for index in range(3):
            try:
                sentinel = Redis(port=self.ports[f"sentinel{index}"], socket_timeout=1)
                host, port = sentinel.sentinel_get_master_addr_by_name(SENTINEL_MASTER)
                return host.decode() if isinstance(host, bytes) else host, int(port)
            except RedisError:
                continue
        raise RuntimeError("no sentinel answered")

    def kill_master(self) -> int:
        """SIGKILL the server that is master now; its port."""
        _, port = self.master_address()
        name = next(n for n, p in self.ports.items() if p == port)
        self.processes[name].kill()
        self.processes[name].wait()
        return port

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class StreamingPostgres:
    """A PostgreSQL 15 primary and a standby cloned with ``pg_basebackup -R``, streaming synchronously.

    Replication is synchronous (``synchronous_standby_names = '*'``, ``synchronous_commit = on``): a commit
    is acknowledged once the standby has flushed it, so promoting the standby loses no acknowledged commit.
    The standby's own settings name no synchronous standby, so after its promotion it writes alone."""

    def __init__(self) -> None:
        self.account = pwd.getpwnam("postgres")
        self.folder = Path(tempfile.mkdtemp(prefix="posegen-test-pg-"))
        os.chown(self.folder, self.account.pw_uid, self.account.pw_gid)
        self.ports: dict[str, int] = {}
        self.primary = "primary"

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(a) for a in args], cwd=self.folder, capture_output=True, text=True, timeout=timeout,
                              user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[], check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, args))} failed: {done.stdout}{done.stderr}")
        return done

    def _pg_ctl_start(self, name: str) -> None:
        sockets = self.folder / "sockets"
        for _ in range(5):
            port = free_port()
            done = self._run(PG_BIN / "pg_ctl", "-D", self.folder / name, "-l", self.folder / f"{name}.log", "-w",
                             "-t", "60", "-o", f"-p {port} -h 127.0.0.1 -k {sockets}", "start", check=False)
            if done.returncode == 0:
                self.ports[name] = port
                return
            self._run(PG_BIN / "pg_ctl", "-D", self.folder / name, "-m", "immediate", "stop", check=False)
        raise RuntimeError(f"PostgreSQL {name} did not start: see {self.folder / f'{name}.log'}")

    def start(self) -> StreamingPostgres:
        (self.folder / "sockets").mkdir()
        os.chown(self.folder / "sockets", self.account.pw_uid, self.account.pw_gid)
        primary = self.folder / "primary"
        self._run(PG_BIN / "initdb", "-D", primary, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with open(primary / "postgresql.conf", "a") as conf:
            conf.write("fsync = off\nfull_page_writes = off\nshared_buffers = 32MB\nmax_connections = 150\n"
                       "wal_level = replica\nmax_wal_senders = 5\nsynchronous_standby_names = '*'\n"
                       "synchronous_commit = on\nwal_sender_timeout = 5s\n")
        self._pg_ctl_start("primary")
        standby = self.folder / "standby"
        self._run(PG_BIN / "pg_basebackup", "-D", standby, "-h", "127.0.0.1", "-p", str(self.ports["primary"]),
                  "-U", "postgres", "-X", "stream", "-R", "-c", "fast")
        with open(standby / "postgresql.auto.conf", "a") as conf:
            conf.write("synchronous_standby_names = ''\n")
        self._pg_ctl_start("standby")
        _wait(lambda: self._admin("primary").execute(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'sync'"
        ).fetchone()[0] == 1, 60, "the standby streaming synchronously")
        return self

    def _admin(self, name: str, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(host="127.0.0.1", port=self.ports[name], user="postgres", dbname=dbname,
                               autocommit=True, connect_timeout=3)

    def create_database(self, name: str) -> None:
        with self._admin(self.primary) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def url(self, dbname: str) -> str:
        """A libpq multi-host URL naming both servers; libpq connects to whichever is read-write."""
        hosts = ",".join(f"127.0.0.1:{self.ports[n]}" for n in ("primary", "standby"))
        return f"postgresql://postgres@{hosts}/{dbname}?target_session_attrs=read-write"

    def stop_primary(self) -> None:
        """``pg_ctl stop -m immediate`` of the primary: its processes end at once, as in a crash."""
        self._run(PG_BIN / "pg_ctl", "-D", self.folder / self.primary, "-m", "immediate", "stop")

    def promote_standby(self) -> None:
        """``pg_ctl promote`` of the standby, waiting until it accepts writes."""
        self._run(PG_BIN / "pg_ctl", "-D", self.folder / "standby", "-w", "promote")
        self.primary = "standby"

    def stop(self) -> None:
        for name in ("primary", "standby"):
            if (self.folder / name / "postmaster.pid").exists():
                self._run(PG_BIN / "pg_ctl", "-D", self.folder / name, "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
