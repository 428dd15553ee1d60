"""``posegen dev``: the whole stack on one machine, supervised until Ctrl-C or until any part of it dies.

The parts are the API, the workers, the exporter, the canary, and the PostgreSQL and Redis
that :mod:`app.devservices` started when none was there. "Is up" is printed only
once every part answers (the API on ``/health``, workers, exporter and canary on
``/metrics``). From then on, as during start-up, the first part to exit is named
in one line with why (its exit code or signal and the last error it printed),
the others are stopped and the command exits 1.

Database roles: migrations and the seed run as the schema's owner (``DATABASE_URL``,
or ``POSEGEN_MIGRATION_DATABASE_URL`` when set); the parts connect as the
application's role (:func:`database_roles`), created when missing, which owns
nothing and holds only what ``posegen migrate`` grants it.

Ports: the API port is the one clients are told about, so a busy one is an
error naming it. The exporter and worker metrics ports, when not chosen, start
at 9108 and 9109 and move to the next free port (said in the output), because
a fresh machine may have something there already.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import psycopg
from redis import Redis
from redis.exceptions import RedisError

from app import API_PREFIX, __version__
from app.db.conninfo import database_problem
from app.db.privileges import AppRoleError, dev_app_role, ensure_app_role, url_as_role
from app.devservices import LocalService, last_problem
from app.domain.intake import read_intake_pause, workers_paused
from app.settings import Settings

DEFAULT_EXPORTER_PORT = 9108
DEFAULT_WORKER_METRICS_PORT = 9109
DEFAULT_CANARY_METRICS_PORT = 9110
READY_TIMEOUT_SECONDS = 60.0
# The make variable (README, Makefile) that sets each port, named in errors so the fix is one copy-paste away.
PORT_VARIABLES = {"API": "API_PORT", "exporter": "EXPORTER_PORT", "worker metrics": "WORKER_METRICS_PORT",
                  "canary metrics": "CANARY_METRICS_PORT"}


class StackError(RuntimeError):
    """The stack cannot start or a part of it died; the message is one line naming the part and why."""


@dataclass(frozen=True)
class DevPorts:
    """The TCP ports the stack listens on, and what was said about ports moved off a busy default."""

    api: int
    exporter: int
    worker_metrics: tuple[int, ...]
    canary: int = DEFAULT_CANARY_METRICS_PORT
    notes: tuple[str, ...] = ()


def port_free(host: str, port: int) -> bool:
    """True when a listening socket could bind ``host:port`` now (SO_REUSEADDR, as uvicorn and http.server).

    False when the port is taken; StackError when ``host`` cannot be listened on at all (not an address here).
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise StackError(f"cannot listen on {host}:{port} ({exc.strerror}): set API_HOST to an address "
                             f"of this machine") from None
        return True


def choose_ports(host: str, api: int, exporter: int | None, worker_metrics: int | None, workers: int,
                 canary: int | None = None) -> DevPorts:
    """The API port as given; exporter, worker and canary metrics ports as given, or the first free ones from their
    defaults (9108, 9109 up, 9110 or the first free one after the workers').

    Raises StackError when a port that was given (the API's always is) is in use.
    """
    taken: set[int] = set()
    notes: list[str] = []

    def given(kind: str, port: int) -> int:
        if not 1 <= port <= 65535:
            raise StackError(f"{PORT_VARIABLES[kind]}={port} is not a TCP port (1-65535)")
        if port in taken or not port_free(host, port):
            raise StackError(f"port {port} on {host} ({kind}) is in use — another `make dev`? "
                             f"choose another: make dev {PORT_VARIABLES[kind]}=<port>")
        taken.add(port)
        return port

    def first_free(kind: str, default: int) -> int:
        port = default
        while port in taken or not port_free(host, port):
            port += 1
            if port > 65535:
                raise StackError(f"no free port for the {kind} from {default} up on {host}")
        if port != default:
            notes.append(f"port {default} is in use: {kind} on {port} (set {PORT_VARIABLES[kind]} to choose)")
        taken.add(port)
        return port

    api_port = given("API", api)
    exporter_port = given("exporter", exporter) if exporter is not None else first_free("exporter",
                                                                                       DEFAULT_EXPORTER_PORT)
    if worker_metrics is not None:
        metrics = tuple(given("worker metrics", worker_metrics + i) for i in range(workers))
    else:
        start = DEFAULT_WORKER_METRICS_PORT
        metrics = tuple(first_free("worker metrics", start if i == 0 else start + i) for i in range(workers))
    canary_port = given("canary metrics", canary) if canary is not None else first_free(
        "canary metrics", max(DEFAULT_CANARY_METRICS_PORT, max(metrics) + 1))
    return DevPorts(api_port, exporter_port, metrics, canary_port, tuple(notes))


@dataclass(frozen=True)
class DatabaseRoles:
    """Who connects how: migrations and the seed as the schema's owner, the stack's processes as the app's role."""

    owner_url: str
    app_url: str
    app_role: str


def database_roles(settings: Settings) -> DatabaseRoles:
    """With ``POSEGEN_MIGRATION_DATABASE_URL`` set, it is the owner's and ``DATABASE_URL`` the processes' as given
    (their role ``POSEGEN_APP_DB_ROLE``, else ``DATABASE_URL``'s user). Without it, ``DATABASE_URL`` is the
    owner's (docs/operating.md's ``postgres``) and the processes connect to the same database, without a password, as
    ``POSEGEN_APP_DB_ROLE``, else ``<database>_app`` (``posegen_app``)."""
    if settings.migration_database_url:
        user = psycopg.conninfo.conninfo_to_dict(settings.database_url).get("user")
        role = settings.app_db_role or str(user or dev_app_role(settings.database_url))
        return DatabaseRoles(settings.migration_database_url, settings.database_url, role)
    role = settings.app_db_role or dev_app_role(settings.database_url)
    return DatabaseRoles(settings.database_url, url_as_role(settings.database_url, role), role)


def prepare_app_role(roles: DatabaseRoles) -> None:
    """Create the application's role when missing (said in one line); StackError when it cannot be."""
    try:
        created = ensure_app_role(roles.owner_url, roles.app_role)
    except AppRoleError as exc:
        raise StackError(str(exc)) from None
    except psycopg.Error as exc:
        raise StackError(database_problem(roles.owner_url, exc)) from None
    if created:
        print(f"[posegen dev] created the database role {roles.app_role} (LOGIN NOSUPERUSER NOCREATEDB "
              "NOCREATEROLE): the stack's processes connect as it", file=sys.stderr, flush=True)


@dataclass
class StackPart:
    """One supervised process: a name for messages, and its last lines of output for the reason it stopped."""

    name: str
    process: subprocess.Popen[bytes]
    output: Callable[[], list[str]]
    ready_url: str | None = None
    ready: bool = False
    forwarder: threading.Thread | None = None

    def exit_reason(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        said = last_problem(self.output())
        return f"{how}: {said}" if said else how


@dataclass
class _Tail:
    """Forwards a child's output to ours line by line and keeps the last lines."""

    lines: deque[str] = field(default_factory=lambda: deque(maxlen=60))

    def pump(self, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode(errors="replace")
            self.lines.append(line.rstrip("\n"))
            sys.stdout.write(line)
            sys.stdout.flush()

    def snapshot(self) -> list[str]:
        return list(self.lines)


def _spawn(name: str, argv: list[str], env: dict[str, str], ready_url: str | None) -> StackPart:
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    tail = _Tail()
    forwarder = threading.Thread(target=tail.pump, args=(process.stdout,), name=f"output of {name}", daemon=True)
    forwarder.start()
    return StackPart(name, process, tail.snapshot, ready_url, forwarder=forwarder)


def _service_part(service: LocalService) -> StackPart:
    return StackPart(f"{service.name} (started here)", service.process, service.alarms, ready=True)


def _run_step(posegen: list[str], step: str, env: dict[str, str], stop: threading.Event) -> None:
    done = subprocess.run([*posegen, step], env=env, capture_output=True, text=True, check=False)
    sys.stdout.write(done.stdout)
    if done.returncode != 0 and not stop.is_set():
        raise StackError(f"posegen {step} failed (exit {done.returncode}): "
                         f"{last_problem((done.stderr + done.stdout).splitlines())}")


def operator_pauses(redis_url: str) -> list[str]:
    """One line per pause an operator set and nobody resumed: a pause outlives restarts of the stack, so a
    stack that starts paused says so (a create would answer 503, or jobs would wait, for no visible reason)."""
    client = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        intake, workers = read_intake_pause(client), workers_paused(client)
    except RedisError:
        return []
    finally:
        client.close()
    lines = []
    if intake is not None:
        lines.append(f"  Intake is PAUSED by {intake.paused_by} ({intake.reason or 'no reason given'}): "
                     "POST /generations answers 503 until `posegen ops resume --scope intake`")
    if workers:
        lines.append("  Workers are PAUSED (drained): queued jobs wait until `posegen ops resume --scope workers`")
    return lines


def banner(settings: Settings, host: str, ports: DevPorts, started: list[str], admin_token: str,
           with_exporter: bool, pauses: list[str] | None = None, app_role: str | None = None) -> str:
    """What a new user needs: every URL the stack serves (API, schema, health, console, metrics), each one that
    answers a browser or curl as printed, an admin token, and the operators' pauses in force
    (:func:`operator_pauses`).

    The API's prefix answers nothing itself, so the API line is the schema viewer, which lists every route."""
    from app.api.admin_console import CONSOLE_PATH

    base = f"http://{host}:{ports.api}"
    api = f"{base}{API_PREFIX}"
    lines = [
        f"Pose Generator {__version__} is up (provider: {settings.provider}; started here: "
        f"{', '.join(started) or 'nothing, PostgreSQL and Redis were running'})",
        *(pauses or []),
        *([f"  Database role:     {app_role} (the processes' role: owns nothing, holds what `posegen migrate` "
            "grants it)"] if app_role else []),
        f"  API:               {base}/schema  (OpenAPI viewer: every route, all under {API_PREFIX}/)",
        f"  OpenAPI schema:    {base}/schema/openapi.json",
        f"  Health:            {api}/health",
        f"  Operator console:  {base}{CONSOLE_PATH}/  (sign in with the admin token below)",
        "  Admin metrics (header  Authorization: Bearer <admin token below>):",
        f"                     {api}/metrics?period=24h",
        f"                     {api}/metrics/health-indicators?period=24h",
        f"                     {api}/metrics/errors?period=24h",
        f"                     {api}/metrics/top-users?limit=10",
        f"                     {api}/metrics/popular-poses?limit=20",
        f"  API metrics:       {api}/metrics-prometheus",
    ]
    if with_exporter:
        lines.append(f"  Exporter metrics:  http://{host}:{ports.exporter}/metrics")
    lines += [f"  Worker metrics:    http://{host}:{port}/metrics" for port in ports.worker_metrics]
    lines.append(f"  Canary metrics:    http://{host}:{ports.canary}/metrics  (a one-pose generation as user "
                 f"posegen-canary every {settings.canary_interval_seconds:g} s)")
    lines += [
        "  Dashboards:        dashboards/build/*.json (import into Grafana, or docker compose in deploy/)",
        f"  Admin token (valid {settings.token_max_ttl_seconds} s, the most POSEGEN_TOKEN_MAX_TTL_SECONDS allows):",
        admin_token,
        "Press Ctrl-C to stop everything started here.",
    ]
    return "\n".join(lines)


def exporter_available() -> bool:
    try:
        import exporter.server  # noqa: F401
    except ImportError:
        return False
    return True


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


def run_dev_stack(settings: Settings, host: str, ports: DevPorts, services: list[LocalService]) -> int:
    """Run migrations, seed, start the parts, print the banner, supervise; returns 0 after Ctrl-C.

    Raises StackError (after stopping every part started here) when a part cannot start or dies.
    """
    from app.api.auth import Role, mint_token

    for note in ports.notes:
        print(f"[posegen dev] {note}", file=sys.stderr, flush=True)
    env = {**os.environ, "POSEGEN_DATA_DIR": str(settings.data_dir.resolve()), "PYTHONUNBUFFERED": "1"}
    roles = database_roles(settings)
    # The owner's URL goes to migrate and seed only; the processes get the application's role's.
    owner_env = {**env, "POSEGEN_MIGRATION_DATABASE_URL": roles.owner_url, "POSEGEN_APP_DB_ROLE": roles.app_role}
    env = {**{k: v for k, v in env.items() if k != "POSEGEN_MIGRATION_DATABASE_URL"}, "DATABASE_URL": roles.app_url}
    posegen = [sys.executable, "-m", "app.cli"]
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    prepare_app_role(roles)
    for step in ("migrate", "seed"):
        _run_step(posegen, step, owner_env, stop)
        if stop.is_set():
            return 0
    parts = [_service_part(service) for service in services]
    children: list[StackPart] = []
    try:
        base = f"http://{host}:{ports.api}"
        children.append(_spawn("API", [*posegen, "api", "--host", host, "--port", str(ports.api)], env,
                               f"{base}{API_PREFIX}/health"))
        for index, port in enumerate(ports.worker_metrics):
            name = f"dev-worker-{index + 1}-{os.getpid()}"
            children.append(_spawn(f"worker {name}", [*posegen, "worker", "--name", name, "--metrics-host", host,
                                                      "--metrics-port", str(port)], env,
                                   f"http://{host}:{port}/metrics"))
        with_exporter = exporter_available()
        if with_exporter:
            children.append(_spawn("exporter", [*posegen, "exporter", "--host", host, "--port", str(ports.exporter)],
                                   env, f"http://{host}:{ports.exporter}/metrics"))
        # The canary: the API's clients' view, as the canary Deployment of deploy/k8s has it.
        children.append(_spawn("canary", [*posegen, "canary", "--metrics-host", host, "--metrics-port",
                                           str(ports.canary)], {**env, "POSEGEN_API_URL": base},
                               f"http://{host}:{ports.canary}/metrics"))
        parts += children
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not all(part.ready for part in parts):
            if stop.is_set():
                return 0
            _check_alive(parts)
            for part in parts:
                if not part.ready and part.ready_url:
                    part.ready = _answers(part.ready_url)
            if time.monotonic() > deadline:
                late = ", ".join(f"{p.name} at {p.ready_url}" for p in parts if not p.ready)
                raise StackError(f"not answering after {READY_TIMEOUT_SECONDS:.0f} s: {late}")
            time.sleep(0.2)
        admin = mint_token(settings.jwt_secret, "admin", Role.ADMIN, settings.token_max_ttl_seconds)
        print(banner(settings, host, ports, [s.name for s in services], admin, with_exporter,
                     operator_pauses(settings.redis_url), roles.app_role), flush=True)
        while not stop.wait(0.3):
            _check_alive(parts)
        return 0
    except StackError:
        # The stack is going down anyway; a worker waiting on a dead Redis does not stop on SIGTERM.
        _stop_children(children, grace=5)
        raise
    finally:
        _stop_children(children, grace=15)


def _check_alive(parts: list[StackPart]) -> None:
    for part in parts:
        if part.process.poll() is not None:
            raise StackError(f"{part.name} (pid {part.process.pid}) {part.exit_reason()}; stopped the rest")


def _stop_children(children: list[StackPart], grace: float) -> None:
    """SIGTERM each, SIGKILL what still runs ``grace`` seconds later; then drain their output."""
    for part in children:
        if part.process.poll() is None:
            part.process.terminate()
    deadline = time.monotonic() + grace
    for part in children:
        try:
            part.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            part.process.kill()
            part.process.wait()
        if part.forwarder is not None:
            part.forwarder.join(timeout=2)  # its last lines (shutdown logs) before our own last line

