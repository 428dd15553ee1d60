"""The API as uvicorn serves it, built once per server process (``posegen api [--workers N]``)."""

from __future__ import annotations

import gc
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from litestar.types import ASGIApp

from app.settings import Settings


def build_asgi_app(settings: Settings | None = None) -> ASGIApp:
    """Sentry and APM set up, JSON logs configured, the Litestar app built (wrapped by both when they are on).

    uvicorn calls it with no argument in each of ``--workers N`` processes (each reads the same
    environment); ``posegen api`` with one process passes the settings it has already checked.
    """
    from app.observability import sentry, tracing
    from app.observability.logging import announce_fault_drill, configure_logging

    settings = settings or Settings.from_env()
    # Before the app is built: both integrations patch libraries (Litestar, psycopg, redis, httpx).
    sentry.init_sentry(settings, process="api")
    tracing.init_tracing(settings)
    configure_logging(settings.log_level)
    announce_fault_drill({t.value: share for t, share in settings.faults.items()}, "API")
    from app.api.app import create_app

    app = create_app(settings)
    # What startup built lives as long as the process: keep the collector from rescanning it.
    gc.freeze()
    return app


@contextmanager
def fresh_multiprocess_dir(given: Path | None) -> Iterator[Path]:
    """An empty folder for prometheus-client's per-process metric files, for one run of the API.

    ``given`` (``PROMETHEUS_MULTIPROC_DIR``) is created if missing and emptied of an earlier run's
    ``*.db`` files, else a temporary folder is made and removed afterwards. Without it, a restarted
    API would add the previous run's counts to its own.
    """
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        for stale in given.glob("*.db"):
            stale.unlink()
        yield given
        return
    made = Path(tempfile.mkdtemp(prefix="posegen-api-metrics-"))
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)
