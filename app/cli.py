"""``posegen``: the command line of every process (api, worker, exporter) and of the operators."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from app import API_PREFIX, __version__
from app.domain.thresholds import MetricsPeriod
from app.settings import Settings, SettingsError


def _settings(*, service: bool = False) -> Settings:
    """The settings, or exit 2 with one line naming the bad variable. A tool prints the warning about a short
    JWT secret here; a ``service`` (api, worker, exporter) logs it as a JSON entry (:func:`_configure_logging`)."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if settings.jwt_secret_warning and not service:
        # Said once here; PyJWT's own warning on every signature is silenced (app.api.auth).
        print(f"warning: {_secret_warning(settings)}", file=sys.stderr)
    return settings


def _secret_warning(settings: Settings) -> str:
    return f"{settings.jwt_secret_warning} (would be refused with POSEGEN_ENV=production)"


BUILTIN_SECRET_WARNING = ("JWT_SECRET is not set: tokens and image URLs are signed with the built-in development "
                          "key, which anyone can read in app/settings.py; set JWT_SECRET to a random secret")


def _configure_logging(settings: Settings, component: str) -> None:
    """JSON logs for a service's every line, the warnings about a short or built-in JWT secret among them."""
    from app.observability.logging import configure_logging, get_logger

    configure_logging(settings.log_level, component=component)
    if settings.jwt_secret_warning:
        get_logger(component).warning(_secret_warning(settings))
    if settings.uses_builtin_jwt_secret:
        get_logger(component).warning(BUILTIN_SECRET_WARNING)


# How long `posegen api` waits for in-flight requests after it stops accepting (uvicorn's
# timeout_graceful_shutdown); the pod's terminationGracePeriodSeconds covers it and the shutdown delay.
API_GRACEFUL_SHUTDOWN_SECONDS = 5


def _loopback_only(host: str) -> bool:
    """Whether an API bound to ``host`` is reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from app.api.asgi import build_asgi_app, fresh_multiprocess_dir
    from app.api.connection_bounds import server_options
    from app.api.draining import DrainingServer, close_connections_while_draining

    settings = _settings(service=True)
    if settings.uses_builtin_jwt_secret and not _loopback_only(args.host):
        # Anyone could sign an ADMIN token with the built-in key: it serves this machine only.
        print(f"error: the API listens on {args.host}, beyond this machine, but JWT_SECRET is not set (anyone can "
              "sign tokens with the built-in development key); set JWT_SECRET or listen on 127.0.0.1",
              file=sys.stderr)
        return 2
    if settings.shutdown_delay_seconds and args.workers > 1:
        # uvicorn's supervisor passes SIGTERM straight on to its processes, which would stop at once.
        print(f"error: POSEGEN_SHUTDOWN_DELAY_SECONDS={settings.shutdown_delay_seconds:g} needs one server process "
              f"per command, not --workers {args.workers}; run more pods (or commands) instead, or set it to 0",
              file=sys.stderr)
        return 2
    # Before uvicorn starts: its own lines (a port in use, a server process that died) are JSON entries too.
    _configure_logging(settings, "API")
    # log_config=None: uvicorn's loggers keep no plain-text handlers of their own and reach the JSON handler.
    served = {"host": args.host, "port": args.port, "access_log": False, "log_level": "warning",
              "timeout_graceful_shutdown": API_GRACEFUL_SHUTDOWN_SECONDS, "log_config": None}

    def serve_one(app: object) -> int:
        # One server process: SIGTERM is a graceful stop after POSEGEN_SHUTDOWN_DELAY_SECONDS (app/api/draining.py).
        config = uvicorn.Config(close_connections_while_draining(app), **served,  # type: ignore[arg-type]
                                **server_options(settings))
        server = DrainingServer(config, settings.shutdown_delay_seconds)
        server.run()
        return 0 if server.started else 3  # uvicorn's own exit status for a failed start-up

    if args.workers == 1 and settings.prometheus_multiproc_dir is None:
        return serve_one(build_asgi_app(settings))
    # One folder of metric files for this run's processes (prometheus-client reads the variable in each
    # of them); files of an earlier run would add its counts to this one's.
    with fresh_multiprocess_dir(settings.prometheus_multiproc_dir) as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        if args.workers == 1:
            return serve_one(build_asgi_app())
        uvicorn.run("app.api.asgi:build_asgi_app", factory=True, workers=args.workers, **served,  # type: ignore[arg-type]
                    **server_options(settings))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app.observability import sentry, tracing

    settings = _settings(service=True)
    sentry.init_sentry(settings, process="worker")
    tracing.init_tracing(settings)
    _configure_logging(settings, "Worker")
    from app.observability.logging import announce_fault_drill

    announce_fault_drill({t.value: share for t, share in settings.faults.items()}, "Worker")
    from app.worker.main import run_worker

    run_worker(settings, name=args.name, burst=args.burst, metrics_host=args.metrics_host,
               metrics_port=args.metrics_port, processes=args.processes)
    return 0


def cmd_exporter(args: argparse.Namespace) -> int:
    from exporter.server import run_exporter

    settings = _settings(service=True)
    _configure_logging(settings, "Metrics")
    run_exporter(settings, host=args.host, port=args.port)
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    """Serve the canary's /metrics and run until SIGTERM/SIGINT (exit 0); ``--once``: one run, exit 0 on success,
    1 on failure. A busy metrics port is one line and exit 2."""
    import signal
    import threading

    from app.canary import Canary, CanaryMetrics
    from app.observability.exposition import serve_metrics

    settings = _settings(service=True)
    _configure_logging(settings, "Canary")
    metrics = CanaryMetrics(settings.revision)
    port = settings.canary_metrics_port if args.metrics_port is None else args.metrics_port
    if not args.once:
        try:
            server, _ = serve_metrics(args.metrics_host, port, metrics.registry)
        except OSError as exc:
            print(f"error: the canary's metrics port {args.metrics_host}:{port} cannot be listened on "
                  f"({exc.strerror}); set POSEGEN_CANARY_METRICS_PORT or --metrics-port", file=sys.stderr)
            return 2
    stop = threading.Event()
    canary = Canary(settings, metrics, stop)

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        if args.once:
            result = canary.run_once()
            return 0 if result is not None and result.outcome == "success" else 1
        canary.run_forever()
        server.shutdown()
        return 0
    finally:
        canary.close()


def _database_failure(command: str, database_url: str, error: Exception) -> int:
    from app.db.conninfo import database_problem

    print(f"error: posegen {command}: {database_problem(database_url, error)}", file=sys.stderr)
    return 1


def cmd_migrate(args: argparse.Namespace) -> int:
    import psycopg

    from app.db.migrate import ensure_database, migrate
    from app.db.privileges import AppRoleError

    settings = _settings()
    owner_url = args.owner_url or settings.owner_database_url
    app_role = args.app_role or settings.app_db_role
    try:
        if ensure_database(owner_url):
            print("created database")
        applied = migrate(owner_url, app_role=app_role or None)
    except psycopg.Error as exc:
        return _database_failure("migrate", owner_url, exc)
    except AppRoleError as exc:
        print(f"error: posegen migrate: {exc}", file=sys.stderr)
        return 1
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    if app_role:
        print(f"privileges of the application's role {app_role}: granted (app/db/grants.sql)")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    import psycopg

    from app.connections import pg_connect_async
    from app.domain.poses import seed_pose_library

    settings = _settings()
    owner_url = args.owner_url or settings.owner_database_url

    async def seed() -> int:
        async with await pg_connect_async(owner_url) as conn:
            return await seed_pose_library(conn)

    try:
        count = asyncio.run(seed())
    except psycopg.Error as exc:
        return _database_failure("seed", owner_url, exc)
    print(f"pose library: {count} poses")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from app.api.auth import Role, mint_token

    settings = _settings()
    if not 1 <= args.ttl <= settings.token_max_ttl_seconds:
        print(f"error: --ttl {args.ttl} is outside 1..{settings.token_max_ttl_seconds} seconds, the lifetime the API "
              "accepts (POSEGEN_TOKEN_MAX_TTL_SECONDS)", file=sys.stderr)
        return 2
    print(f"user {args.user}, role {args.role}, valid {args.ttl} s")
    print(mint_token(settings.jwt_secret, args.user, Role(args.role), args.ttl))
    return 0


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "no data"
    return f"{int(value) if float(value).is_integer() else f'{value:.2f}'} {unit}"


_STATUS_COLOURS = {"good": "\033[32m", "warning": "\033[33m", "critical": "\033[31m"}


def cmd_status(args: argparse.Namespace) -> int:
    """Print the health indicators as a table; exit 1 when any is critical, 2 when they cannot be read."""
    import httpx

    from app.api.auth import Role, mint_token

    settings = _settings()
    token = args.token or mint_token(settings.jwt_secret, "posegen-status", Role.ADMIN, 300)
    url = f"{args.url.rstrip('/')}{API_PREFIX}/metrics/health-indicators"
    try:
        answer = httpx.get(url, params={"period": args.period}, headers={"Authorization": f"Bearer {token}"},
                           timeout=10)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {url}: {exc}", file=sys.stderr)
        return 2
    if answer.status_code != 200:
        print(f"error: {url} answered {answer.status_code}: {answer.text[:500]}", file=sys.stderr)
        return 2
    body = answer.json()
    colour = sys.stdout.isatty()

    def paint(status: str, text: str) -> str:
        return f"{_STATUS_COLOURS[status]}{text}\033[0m" if colour and status in _STATUS_COLOURS else text

    header = ("INDICATOR", "VALUE", "STATUS", "ACTION")
    rows = [(i["name"], _figure(i["value"], i["unit"]), f"{i['status'].upper()} ({i['label']})", i["action"],
             i["status"]) for i in body["indicators"]]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(3)]
    print(f"Pose Generator health, last {body['period']} ({body['startTime']} .. {body['endTime']})")
    print("  ".join([header[0].ljust(widths[0]), header[1].rjust(widths[1]), header[2].ljust(widths[2]), header[3]]))
    for name, value, judged, action, status in rows:
        print("  ".join([name.ljust(widths[0]), value.rjust(widths[1]), paint(status, judged.ljust(widths[2])),
                         action]))
    for indicator in body["indicators"]:
        if indicator.get("note"):
            print(f"note: {indicator['name']}: {indicator['note']}")
    print(f"overall: {paint(body['status'], body['status'].upper())}")
    print(_worker_capacity(settings, args, token))
    return 1 if body["status"] == "critical" else 0


def _worker_capacity(settings: Settings, args: argparse.Namespace, token: str) -> str:
    """One line: worker processes the provider cap needs (from the period's poses per generation) and how many
    are registered now in the Redis at this shell's ``REDIS_URL``, which it names: a count of 0 while workers
    run usually means the stack uses another Redis."""
    import httpx
    from redis.exceptions import RedisError
    from rq import Worker

    from app.connections import describe_redis_url, redis_client
    from app.worker.pool import processes_for_cap

    cap, pose_concurrency = settings.provider_concurrency, settings.pose_concurrency
    try:
        answer = httpx.get(f"{args.url.rstrip('/')}{API_PREFIX}/metrics", params={"period": args.period},
                           headers={"Authorization": f"Bearer {token}"}, timeout=10)
        poses = float(answer.json().get("avgPosesPerGeneration") or 0) if answer.status_code == 200 else 0.0
    except (httpx.HTTPError, ValueError):
        poses = 0.0
    basis = f"{poses:.1f} poses per generation" if poses else \
        f"no generations in {args.period}, so full ones of {settings.max_poses_per_generation} poses"
    needed = processes_for_cap(cap, poses or settings.max_poses_per_generation, pose_concurrency)
    read = f"REDIS_URL={describe_redis_url(settings.redis_url)}"
    try:
        client = redis_client(settings.redis_url, sentinel=settings.redis_sentinel)
        registered = f"{Worker.count(connection=client)} registered now in the Redis this command read, {read}"
        client.close()
    except RedisError:
        registered = f"registered now: unknown ({read} is unreachable from here)"
    return (f"workers: provider cap {cap} / min({basis}, POSEGEN_POSE_CONCURRENCY {pose_concurrency}) = "
            f"at least {needed} worker processes to keep it full; {registered}")


def cmd_ops(args: argparse.Namespace) -> int:
    from app.ops_cli import run_ops

    return run_ops(args, _settings())


def cmd_dashboards(args: argparse.Namespace) -> int:
    from alerts.platform import PlatformError
    from alerts.platform import load as load_platform
    from dashboards import write_dashboards

    try:
        platform = load_platform(Path(args.platform)) if args.platform else load_platform()
    except PlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in write_dashboards(Path(args.out), platform):
        print(path)
    k8s_dir = Path(args.k8s_out)
    if k8s_dir.is_dir():
        from app.k8s import write_dashboards_configmap

        print(write_dashboards_configmap(k8s_dir))
    return 0


def cmd_slo(args: argparse.Namespace) -> int:
    from alerts.build import write_slo_files
    from alerts.platform import PlatformError
    from alerts.platform import load as load_platform
    from alerts.slo_spec import SpecError

    try:
        platform = load_platform(Path(args.platform)) if args.platform else load_platform()
        paths = write_slo_files(Path(args.out) if args.out else None, platform)
    except (SpecError, PlatformError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    if args.action == "backtest":
        from alerts.backtest import run_backtest

        return run_backtest(args)
    from alerts.build import write_rule_files
    from alerts.platform import PlatformError
    from alerts.platform import load as load_platform

    try:
        platform = load_platform(Path(args.platform)) if args.platform else load_platform()
        if not args.out:
            # The committed files carry the config's defaults; deployments build copies with --out.
            paths = write_rule_files(None, platform=platform)
        else:
            # Settings set in the environment win; left at their defaults, the config's links apply.
            settings, defaults = _settings(), Settings
            runbook = settings.runbook_base_url
            grafana = settings.grafana_url
            paths = write_rule_files(
                Path(args.out),
                None if runbook == defaults.runbook_base_url else runbook,
                None if grafana == defaults.grafana_url else grafana,
                platform,
            )
    except PlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def _print_written(build: Callable[[], Iterable[Path]], refused: tuple[type[Exception], ...] = ()) -> int:
    """Run ``build`` and print the paths it wrote, one a line: 0. An error of a ``refused`` type is printed as
    one ``error:`` line instead: 2."""
    try:
        paths = list(build())
    except refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def cmd_k8s(args: argparse.Namespace) -> int:
    from app.k8s import ManifestError, write_manifests

    return _print_written(lambda: write_manifests(Path(args.rules), Path(args.out)), (ManifestError, SettingsError))


def cmd_docs(args: argparse.Namespace) -> int:
    from app.docs_tables import DocsError, build_docs

    return _print_written(lambda: build_docs(Path(args.docs)), (DocsError,))


def cmd_dev(args: argparse.Namespace) -> int:
    from app.devservices import ServiceError, local_services
    from app.devstack import StackError, choose_ports, run_dev_stack

    settings = _settings()
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        ports = choose_ports(args.host, args.port, args.exporter_port, args.worker_metrics_port, args.workers,
                             args.canary_metrics_port)
        with local_services(settings.database_url, settings.redis_url, settings.data_dir.resolve()) as services:
            return run_dev_stack(settings, args.host, ports, services)
    except (ServiceError, StackError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130  # Ctrl-C before the stack was up; what was started has been stopped


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posegen", description="Pose Generator service and tools.")
    parser.add_argument("--version", action="version", version=f"posegen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        return command

    api = add("api", cmd_api, "Run the HTTP API (Litestar on uvicorn).")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=_positive, default=1,
                     help="server processes on the one port (uvicorn workers; /metrics-prometheus sums them all)")
    worker = add("worker", cmd_worker, "Run an RQ worker on the pose-generation queue.")
    worker.add_argument("--name", default=None, help="worker name (default: RQ's)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--metrics-host", default="127.0.0.1")
    worker.add_argument("--metrics-port", type=int, default=9109,
                        help="Prometheus /metrics port, shared by the workers of this host given the same one "
                             "(whichever holds it serves all their timings; 0: off)")
    worker.add_argument("--processes", type=_positive, default=1,
                        help="worker processes under this command (RQ's WorkerPool; one metrics endpoint)")
    exporter = add("exporter", cmd_exporter, "Run the Prometheus exporter (queue and database metrics).")
    exporter.add_argument("--host", default="127.0.0.1")
    exporter.add_argument("--port", type=int, default=9108)
    canary = add("canary", cmd_canary, "Run the canary: a one-pose generation through the API every "
                                       "POSEGEN_CANARY_INTERVAL_SECONDS, as user posegen-canary, with /metrics.")
    canary.add_argument("--metrics-host", default="127.0.0.1")
    canary.add_argument("--metrics-port", type=int, default=None,
                        help="Prometheus /metrics port (default: POSEGEN_CANARY_METRICS_PORT, 9110)")
    canary.add_argument("--once", action="store_true",
                        help="one run without /metrics; exit 0 when it succeeded, 1 when it failed")
    owner_url_help = ("the schema owner's PostgreSQL URL (default: POSEGEN_MIGRATION_DATABASE_URL, else "
                      "DATABASE_URL)")
    migrate_command = add("migrate", cmd_migrate, "Create the database if needed, apply pending migrations and "
                                                  "re-apply the privileges, as the schema's owner.")
    migrate_command.add_argument("--owner-url", default=None, help=owner_url_help)
    migrate_command.add_argument("--app-role", default=None,
                                 help="the role the processes connect as, granted exactly what they use "
                                      "(default: POSEGEN_APP_DB_ROLE; none: no role is granted anything)")
    seed_command = add("seed", cmd_seed, "Load the built-in pose library, as the schema's owner.")
    seed_command.add_argument("--owner-url", default=None, help=owner_url_help)
    token = add("token", cmd_token, "Mint a JWT for a user; the token is printed alone on the last line.")
    token.add_argument("--user", required=True)
    token.add_argument("--role", choices=("USER", "ADMIN"), default="USER")
    token.add_argument("--ttl", type=int, default=3600,
                       help="seconds until it expires (default 3600; at most POSEGEN_TOKEN_MAX_TTL_SECONDS)")
    status = add("status", cmd_status, "Print the health indicators (exit 1 when one is critical, 2 when unreadable).")
    status.add_argument("--period", choices=[period.value for period in MetricsPeriod], default=MetricsPeriod.DAY.value)
    status.add_argument("--url", default="http://127.0.0.1:8000", help="the API's base URL")
    status.add_argument("--token", default=None, help="a JWT (default: an ADMIN token minted from JWT_SECRET)")
    from app.ops_cli import add_ops_parser

    add_ops_parser(sub).set_defaults(handler=cmd_ops)
    dash = add("dashboards", cmd_dashboards, "Dashboards as code: 'build' writes the Grafana JSON.")
    dash.add_argument("action", choices=("build",))
    dash.add_argument("--out", default="dashboards/build")
    dash.add_argument("--k8s-out", default="deploy/k8s", help="where the dashboards ConfigMap is refreshed too")
    dash.add_argument("--platform", default=None, help="the platform config (default alerts/platform.yml)")
    slo = add("slo", cmd_slo, "SLOs as code: 'build' compiles alerts/slos.yml into rules and promtool tests.")
    slo.add_argument("action", choices=("build",))
    slo.add_argument("--out", default=None, help="write into this directory (default: alerts/rules, alerts/tests)")
    slo.add_argument("--platform", default=None,
                     help="the platform config (default alerts/platform.yml; another one builds the rules only)")
    alerts = add("alerts", cmd_alerts,
                 "Alert rules: 'build' writes runbook and dashboard links from POSEGEN_RUNBOOK_BASE_URL and "
                 "POSEGEN_GRAFANA_URL; 'backtest' replays the alerts over a Prometheus's history.")
    alerts.add_argument("action", choices=("build", "backtest"))
    alerts.add_argument("--platform", default=None,
                        help="build: the platform config (selectors, grouping labels, alert overrides, links)")
    alerts.add_argument("--out", default=None,
                        help="build: write deployable rule files here with the configured bases "
                        "(default: refresh the committed ones, with the documented defaults)")
    alerts.add_argument("--prometheus", default="http://127.0.0.1:9090", help="backtest: Prometheus base URL")
    alerts.add_argument("--since", default="7d", help="backtest: how far back, e.g. 6h, 7d (default 7d)")
    alerts.add_argument("--step", default="1m", help="backtest: evaluation interval to emulate (default 1m)")
    alerts.add_argument("--override", action="append", default=[], metavar="ALERT=THRESHOLD",
                        help="backtest: replace the alert's first threshold (repeatable)")
    k8s = add("k8s", cmd_k8s, "Kubernetes: 'build' writes deploy/k8s's PrometheusRule (from alerts/rules) and "
                              "dashboards ConfigMap, and sets worker.yaml's grace period from config.yaml's settings.")
    k8s.add_argument("action", choices=("build",))
    k8s.add_argument("--rules", default="alerts/rules", help="the rule files' folder")
    k8s.add_argument("--out", default="deploy/k8s")
    docs = add("docs", cmd_docs, "Docs: 'build' writes docs/'s generated tables (settings, metrics) from the code.")
    docs.add_argument("action", choices=("build",))
    docs.add_argument("--docs", default="docs", help="the docs folder")
    dev = add("dev", cmd_dev, "Run the whole stack locally, starting PostgreSQL and Redis when none is reachable.")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--workers", type=int, default=2)
    dev.add_argument("--exporter-port", type=int, default=None,
                     help="exporter /metrics port (default: 9108, or the next free one)")
    dev.add_argument("--worker-metrics-port", type=int, default=None,
                     help="first worker's /metrics port, the others follow (default: 9109 up, skipping busy ones)")
    dev.add_argument("--canary-metrics-port", type=int, default=None,
                     help="the canary's /metrics port (default: 9110, or the next free one after the workers')")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
