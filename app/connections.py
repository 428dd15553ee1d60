"""How the project opens PostgreSQL connections and Redis clients: a bounded connect, and a dead peer noticed
in bounded time. Every process (API, worker, reaper, exporter, ``posegen migrate``/``seed``) opens its
connections here; a caller states only what is its own (a timeout, an application name).

PostgreSQL, with libpq's own mechanisms: ``connect_timeout``; TCP keepalives (a probe after 10 s of silence,
every 5 s, three missed = dead), so an idle connection whose route died (a dropped NAT entry, a failed-over
load balancer) breaks within about 25 s instead of the kernel's two hours; and ``tcp_user_timeout``, so data
the peer never acknowledges fails the connection within 30 s. A peer that acknowledges but never answers (a
hung proxy) is beyond TCP: callers bound their statements themselves with :func:`app.db.connect.bounded`
or with ``statement_timeout`` on the server.

Redis, with redis-py's: bounded connect and reads, the same TCP keepalives, and a health check (a ``PING``)
of a pooled connection that sat idle, so a silently dead one is replaced, not used. With ``REDIS_SENTINELS``
the master is found through Redis Sentinel (redis-py's ``Sentinel.master_for``): each new connection asks the
sentinels for the master's address, and a connection that fails or meets a demoted master (``READONLY``, the
``UNBLOCKED`` of a blocking command) is dropped, so the next command finds the new master without a restart.

PostgreSQL failover is libpq's: a multi-host ``DATABASE_URL`` with ``target_session_attrs=read-write`` connects
to whichever host is the primary now; a connection to a server that went away fails and is replaced.

Outbound HTTP (FLUX, Supabase Storage): ``httpx.AsyncClient`` on one TLS context per process. Building a
client loads the CA bundle into a new SSL context each time (20-90 ms of CPU, paid by every work-horse for
every generation); the worker builds the context before it forks (:func:`warm_tls`), and horses reuse it.
"""

from __future__ import annotations

import functools
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from app.settings import RedisSentinel

KEEPALIVE_IDLE_SECONDS = 10
KEEPALIVE_INTERVAL_SECONDS = 5
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_MS = 30_000


def pg_connect_kwargs(connect_timeout: int = 5, tcp_user_timeout_ms: int = TCP_USER_TIMEOUT_MS) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.connect``/``AsyncConnection.connect``/pool ``kwargs`` (libpq parameters)."""
    return {
        "connect_timeout": connect_timeout,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_SECONDS,
        "keepalives_interval": KEEPALIVE_INTERVAL_SECONDS,
        "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": tcp_user_timeout_ms,
    }


def pg_connect(database_url: str, *, autocommit: bool = False, connect_timeout: int = 5,
               tcp_user_timeout_ms: int = TCP_USER_TIMEOUT_MS, **libpq: Any) -> psycopg.Connection[Any]:
    """A synchronous connection (seconds for ``connect_timeout``; ``libpq``: more connection parameters,
    e.g. ``application_name``), to the server :func:`server_first` names first. Raises
    :class:`psycopg.OperationalError` when the server cannot be reached."""
    conn = psycopg.connect(database_url, autocommit=autocommit,
                           **pg_connect_kwargs(connect_timeout, tcp_user_timeout_ms), **server_first(database_url),
                           **libpq)
    _remember_server(database_url, conn.info)
    return conn


async def pg_connect_async(database_url: str, *, autocommit: bool = True,
                           connect_timeout: int = 5) -> AsyncConnection[Any]:
    """An asyncio connection, autocommit unless told otherwise (use as ``async with await pg_connect_async(...)``),
    to the server :func:`server_first` names first. Raises :class:`psycopg.OperationalError` when the server
    cannot be reached."""
    conn = await AsyncConnection.connect(database_url, autocommit=autocommit, **pg_connect_kwargs(connect_timeout),
                                         **server_first(database_url))
    _remember_server(database_url, conn.info)
    return conn


# By multi-host DATABASE_URL: the position of the server this process last connected to. Work-horses forked
# later inherit it from the worker, whose reaper connects every few seconds.
_last_server: dict[str, int] = {}


def _servers(database_url: str) -> list[tuple[str, str, str]] | None:
    """``(host, hostaddr, port)`` of each server a multi-host ``database_url`` names, in its order; None when
    the order is not libpq's to keep: one server, or no ``target_session_attrs`` (then the first that answers
    is the one wanted, and remembering another would stick to a standby), or ``load_balance_hosts=random``."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(database_url)
    if params.get("target_session_attrs", "any") == "any" or params.get("load_balance_hosts") == "random":
        return None
    hosts = str(params.get("host") or "").split(",")
    addresses = str(params.get("hostaddr") or "").split(",")
    count = max(len(hosts), len(addresses))
    ports = str(params.get("port") or "").split(",")
    if count < 2 or len(ports) not in (1, count):
        return None
    def at(values: list[str], index: int) -> str:
        return values[index] if len(values) == count else values[0] if len(values) == 1 else ""
    return [(at(hosts, i), at(addresses, i), at(ports, i)) for i in range(count)]


def server_first(database_url: str) -> dict[str, Any]:
    """libpq parameters (``host``, ``hostaddr``, ``port``) that override ``database_url``'s server list with the
    server this process last connected to moved to the front, the others in their order; {} when there is none
    (see :func:`_servers`). After a failover, libpq would otherwise try the old primary first on every
    connection: a host that is gone (its packets dropped) costs the whole ``connect_timeout`` each time, and a
    work-horse connects once per generation."""
    servers = _servers(database_url) if database_url in _last_server else None
    if servers is None or _last_server[database_url] >= len(servers):
        return {}
    first = _last_server[database_url]
    order = [servers[first]] + servers[:first] + servers[first + 1:]
    return {key: ",".join(server[index] for server in order)
            for index, key in enumerate(("host", "hostaddr", "port")) if any(server[index] for server in order)}


def _remember_server(database_url: str, info: Any) -> None:
    """Note which server of ``database_url`` the connection described by ``info`` (psycopg's ``ConnectionInfo``)
    reached, for :func:`server_first`."""
    servers = _servers(database_url)
    if servers is None:
        return
    for index, (host, address, port) in enumerate(servers):
        if (address or host) == (info.hostaddr if address else info.host) and (port or "5432") == str(info.port):
            _last_server[database_url] = index
            return


def pg_pool(database_url: str, *, min_size: int, max_size: int, connect_timeout: int = 2,
            **pool: Any) -> AsyncConnectionPool:
    """An asyncio pool of autocommit connections, not opened yet (``pool``: more
    :class:`psycopg_pool.AsyncConnectionPool` arguments, e.g. ``timeout``, ``check``, ``max_idle``)."""
    return AsyncConnectionPool(database_url, min_size=min_size, max_size=max_size, open=False,
                               kwargs={"autocommit": True, **pg_connect_kwargs(connect_timeout=connect_timeout)},
                               **pool)


# TCP keepalive probes after 10 s idle, every 5 s, 3 missed: a connection whose route died breaks in ~25 s.
REDIS_KEEPALIVE_OPTIONS = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}
# A pooled connection idle this long is PINGed before use, so a silently dead one is replaced, not used.
REDIS_HEALTH_CHECK_SECONDS = 10


def redis_options(socket_timeout: float | None = 2.0, *, connect_timeout: float = 1.0,
                  health_check_seconds: int = REDIS_HEALTH_CHECK_SECONDS) -> dict[str, Any]:
    """redis-py client options shared by every long-lived client (sync and asyncio): bounded connect and
    reads (``socket_timeout`` in seconds: a peer that stops answering fails the command instead of hanging
    it; None waits for ever, for blocking commands), TCP keepalives and a health check of connections that
    sat idle longer than ``health_check_seconds`` (0: none)."""
    return {
        "socket_connect_timeout": connect_timeout, "socket_timeout": socket_timeout, "socket_keepalive": True,
        "socket_keepalive_options": REDIS_KEEPALIVE_OPTIONS, "health_check_interval": health_check_seconds,
    }


def redis_client(redis_url: str, *, socket_timeout: float | None = 2.0, connect_timeout: float = 1.0,
                 retries: int = 2, health_check_seconds: int = REDIS_HEALTH_CHECK_SECONDS,
                 sentinel: RedisSentinel | None = None) -> Redis:
    """A client that fails fast when Redis is unreachable or silent, so the API can answer 503 quickly.

    A command whose connection failed or timed out is retried ``retries`` times on a fresh connection (a
    connection that went silent is replaced, not waited on), with a short backoff; ``retries=0`` gives up
    at once. The queue's commands are safe to repeat: an enqueue whose answer was lost may deliver its job
    twice, and the second delivery finds the generation already claimed and skips it.

    With ``sentinel`` (``Settings.redis_sentinel``) the client talks to the master the sentinels name now
    (``REDIS_URL`` gives the database number, credentials and TLS; its host is not used); a fresh connection
    after a failover goes to the new master. Raises :class:`redis.exceptions.ConnectionError` (a
    ``MasterNotFoundError`` when no sentinel names a master) on the command, never here."""
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries) if retries else Retry(NoBackoff(), 0)
    options = redis_options(socket_timeout, connect_timeout=connect_timeout, health_check_seconds=health_check_seconds)
    if sentinel is not None:
        from redis.sentinel import Sentinel

        manager = Sentinel(list(sentinel.sentinels), sentinel_kwargs=_sentinel_options(sentinel, connect_timeout),
                           **_master_options(redis_url))
        manager.sentinels = [_SentinelClient(host=host, port=port, **manager.sentinel_kwargs)
                             for host, port in sentinel.sentinels]
        return manager.master_for(sentinel.master, connection_pool_class=_master_checking_pool(), retry=retry,
                                  **options)
    return Redis.from_url(redis_url, retry=retry, **options)


class _NamedByAddress:
    """A sentinel's client shown as its address. redis-py's ``MasterNotFoundError`` lists each sentinel that
    failed as its client's repr, a kilobyte of connection options apiece, burying the reason (refused, timed
    out, ``AuthenticationError`` for a wrong ``REDIS_SENTINEL_PASSWORD``) in every log line of an outage."""

    connection_pool: Any

    def __repr__(self) -> str:
        options = self.connection_pool.connection_kwargs
        return f"sentinel {options.get('host')}:{options.get('port')}"


class _SentinelClient(_NamedByAddress, Redis):
    pass


class _AsyncSentinelClient(_NamedByAddress, AsyncRedis):  # type: ignore[misc]  # redis-py's own bases disagree
    pass


def _master_options(redis_url: str) -> dict[str, Any]:
    """What ``REDIS_URL`` says of the master's connections when Sentinel names the host: the database,
    credentials and TLS (``rediss://``, with its ``ssl_*`` query options: ``ssl_ca_certs``, ``ssl_cert_reqs``,
    ``ssl_check_hostname`` ...)."""
    from redis.connection import parse_url

    parsed = parse_url(redis_url)
    options = {key: value for key, value in parsed.items()
               if value is not None and (key in ("db", "username", "password") or key.startswith("ssl_"))}
    if redis_url.startswith("rediss://"):
        options["ssl"] = True
    return options


def _sentinel_options(sentinel: RedisSentinel, connect_timeout: float) -> dict[str, Any]:
    """The sentinels' own connections: short timeouts (an unreachable sentinel is skipped for the next
    one), their password if they have one."""
    options: dict[str, Any] = {"socket_connect_timeout": connect_timeout, "socket_timeout": max(connect_timeout, 1.0)}
    if sentinel.password:
        options["password"] = sentinel.password
    return options


def redis_server_address(client: Redis | AsyncRedis) -> str | None:
    """``host:port`` of the Redis server ``client`` talks to: the master Sentinel last named (None before the
    first command), or the URL's host; for metrics and logs that show a failover."""
    pool = client.connection_pool
    master = getattr(pool, "master_address", None)
    if master is not None:
        return f"{master[0]}:{master[1]}"
    if hasattr(pool, "service_name"):
        return None
    options = pool.connection_kwargs
    if "path" in options:
        return f"unix:{options['path']}"
    return f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"


def describe_redis_url(redis_url: str) -> str:
    """Which Redis ``redis_url`` names, for messages: ``redis://host:port/db`` with the port and database
    spelled out (``unix://path?db=N`` for a socket) and any password shown as ``***``, so an operator can
    compare it with the Redis a stack uses without the secret landing in a terminal or a log."""
    from redis.connection import parse_url

    try:
        options = parse_url(redis_url)
        parts = urlsplit(redis_url)
    except ValueError:
        return "REDIS_URL (unparsable)"
    credentials = ""
    if parts.username or parts.password:
        credentials = f"{parts.username or ''}{':***' if parts.password else ''}@"
    database = options.get("db", 0)
    if "path" in options:
        return f"unix://{credentials}{options['path']}?db={database}"
    host = parts.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{credentials}{host}:{parts.port or 6379}/{database}"


def async_redis_client(redis_url: str, *, socket_timeout: float | None = 2.0, retry: Any = None,
                       sentinel: RedisSentinel | None = None) -> AsyncRedis:
    """An asyncio client with the same options (``retry``: a :class:`redis.asyncio.retry.Retry`; None keeps
    redis-py's own retries), through Sentinel with ``sentinel`` as :func:`redis_client`
    (``redis.asyncio.sentinel``)."""
    options = redis_options(socket_timeout)
    if retry is not None:
        options["retry"] = retry
    if sentinel is not None:
        from redis.asyncio.sentinel import Sentinel as AsyncSentinel

        manager = AsyncSentinel(list(sentinel.sentinels), sentinel_kwargs=_sentinel_options(sentinel, 1.0),
                                **_master_options(redis_url))
        manager.sentinels = [_AsyncSentinelClient(host=host, port=port, **manager.sentinel_kwargs)
                             for host, port in sentinel.sentinels]
        return manager.master_for(sentinel.master, connection_pool_class=_async_master_checking_pool(), **options)
    return AsyncRedis.from_url(redis_url, **options)


# How often a Sentinel client re-asks the sentinels which server is the master, when it takes a connection.
MASTER_CHECK_SECONDS = 1.0


@functools.cache
def _master_following_connections() -> tuple[type, type]:
    """redis-py's Sentinel connections (plain, TLS), following the master on every reconnect.

    redis-py's ``SentinelManagedConnection.connect()`` asks the sentinels for the master, but a command sent on
    a connection that was dropped reconnects in ``send_packed_command`` to the address the connection had: a
    retried command after a failed one, and a pub/sub listener's health-check ``PING``, went to the killed
    master for ever (an RQ worker's command listener retried it for as long as the failover drill ran, so RQ's
    shutdown command never reached the worker). These reconnect through ``connect()``."""
    from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

    class MasterFollowingConnection(SentinelManagedConnection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if not self._sock:
                self.connect()  # the master the sentinels name now
            super().send_packed_command(command, check_health)

    class MasterFollowingSSLConnection(MasterFollowingConnection, SentinelManagedSSLConnection):
        pass

    return MasterFollowingConnection, MasterFollowingSSLConnection


@functools.cache
def _async_master_following_connections() -> tuple[type, type]:
    """:func:`_master_following_connections` for ``redis.asyncio``."""
    from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

    class AsyncMasterFollowingConnection(SentinelManagedConnection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if not self.is_connected:
                await self.connect()
            await super().send_packed_command(command, check_health)

    class AsyncMasterFollowingSSLConnection(AsyncMasterFollowingConnection, SentinelManagedSSLConnection):
        pass

    return AsyncMasterFollowingConnection, AsyncMasterFollowingSSLConnection


@functools.cache
def _master_checking_pool() -> type:
    """redis-py's ``SentinelConnectionPool`` asks the sentinels for the master only when a connection opens, so
    after a coordinated failover (``SENTINEL FAILOVER``, or a partition the old master is on) pooled connections
    kept writing to the old master until Sentinel demoted it, about 10 s later, and those writes were lost with
    its resync. This pool re-asks at most every :data:`MASTER_CHECK_SECONDS` when a connection is taken; a new
    master disconnects the idle connections (redis-py's own ``get_master_address``), which reconnect to it.
    Its connections are :func:`_master_following_connections`'."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.sentinel import SentinelConnectionPool

    plain, tls = _master_following_connections()

    class MasterCheckingPool(SentinelConnectionPool):
        _checked_at = 0.0

        def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
            kwargs.setdefault("connection_class", tls if kwargs.pop("ssl", False) else plain)
            super().__init__(service_name, sentinel_manager, **kwargs)

        def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            now = time.monotonic()
            if self.is_master and now - self._checked_at >= MASTER_CHECK_SECONDS:
                self._checked_at = now
                try:
                    self.get_master_address()
                except (RedisConnectionError, RedisTimeoutError):
                    pass  # no sentinel answers: the connection's own connect() reports it
            return super().get_connection(*args, **kwargs)

    return MasterCheckingPool


@functools.cache
def _async_master_checking_pool() -> type:
    """:func:`_master_checking_pool` for ``redis.asyncio``."""
    from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    plain, tls = _async_master_following_connections()

    class AsyncMasterCheckingPool(AsyncSentinelConnectionPool):
        _checked_at = 0.0

        def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
            kwargs.setdefault("connection_class", tls if kwargs.pop("ssl", False) else plain)
            super().__init__(service_name, sentinel_manager, **kwargs)

        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            now = time.monotonic()
            if self.is_master and now - self._checked_at >= MASTER_CHECK_SECONDS:
                self._checked_at = now
                try:
                    await self.get_master_address()
                except (RedisConnectionError, RedisTimeoutError):
                    pass
            return await super().get_connection(*args, **kwargs)

    return AsyncMasterCheckingPool


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """This process's TLS context for outbound calls (certificate checks on; SSL_CERT_FILE honoured)."""
    return httpx.create_ssl_context()


def warm_tls() -> None:
    """Build the shared context and import what an ``httpx.AsyncClient`` and its first request load lazily
    (about 150 modules: the async transport, anyio's asyncio backend, h11), so processes forked later inherit
    them instead of each paying ~80 ms for them."""
    import anyio._backends._asyncio  # noqa: F401 - imported for the forked processes
    import h11  # noqa: F401
    import httpcore._async.http11  # noqa: F401

    httpx.AsyncClient(verify=shared_ssl_context())


def http_client(timeout: httpx.Timeout) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` with ``timeout`` on the shared TLS context."""
    return httpx.AsyncClient(timeout=timeout, verify=shared_ssl_context())
