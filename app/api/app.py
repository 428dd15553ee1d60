"""The Litestar app factory: builds the app from a :class:`~app.settings.Settings` object."""

from __future__ import annotations

import select
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app import API_PREFIX, __version__
from app.api.admin_console import ConsoleController
from app.api.admin_operations import OperatorController
from app.api.credits import CreditController
from app.api.deps import DEPENDENCIES
from app.api.errors import EXCEPTION_HANDLERS
from app.api.flux_webhooks import flux_webhook
from app.api.generation_creates import GenerationCreator
from app.api.generation_reads import GenerationReader
from app.api.generations import GenerationController
from app.api.health import health, liveness
from app.api.http_metrics import (
    BUILD_INFO,
    create_route_series,
    http_metrics_middleware,
    metrics_prometheus,
    scrape_registry,
)
from app.api.images import image
from app.api.metrics import MetricsController
from app.api.poses import PoseController
from app.api.rate_limit import STORE_NAME, generation_rate_limit, rate_limit_store
from app.db.connect import pg_connect_kwargs
from app.domain.intake import IntakeGate
from app.observability import tracing
from app.providers.flux_webhooks import webhook_secret
from app.settings import Settings
from app.storage.factory import build_storage
from app.worker.queue import BatchEnqueuer, make_queue, make_redis

MAX_BODY_BYTES = 64 * 1024


async def _check_not_closed_by_server(conn: AsyncConnection[Any]) -> None:
    """Whether the server closed this idle connection (a terminated backend, a restart) shows without a
    round trip: its socket has the server's last message or the end of the stream waiting. An empty query
    per checkout, psycopg's own check, cost a fifth of GET /generations/{id} throughput. A closed
    connection fails the check and the pool replaces it."""
    if not conn.closed and not select.select([conn.fileno()], [], [], 0)[0]:
        return
    await conn.close()
    raise psycopg.OperationalError("connection closed by the server")


def create_app(settings: Settings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        pool = AsyncConnectionPool(
            settings.database_url, min_size=1, max_size=settings.db_pool_size, open=False,
            kwargs={"autocommit": True, **pg_connect_kwargs(connect_timeout=2)}, timeout=5,
            # A coalesced batch carries many requests: a connection the server has closed must be
            # replaced before it is handed out, not discover it by failing them all.
            check=_check_not_closed_by_server,
            max_idle=60,
        )
        await pool.open(wait=False)
        redis = make_redis(settings.redis_url)
        storage = build_storage(settings, api_url_prefix=f"{settings.public_base_url}{API_PREFIX}/images")
        app.state.pool = pool
        app.state.redis = redis
        app.state.queue = make_queue(redis)
        app.state.intake_gate = IntakeGate(redis)
        # With APM on, each request enqueues its own job and runs its own create, so that both carry the
        # request's trace; otherwise concurrent requests share Redis and database transactions.
        shared = not tracing.enabled()
        app.state.enqueuer = BatchEnqueuer(app.state.queue) if shared else None
        app.state.storage = storage
        app.state.generation_reader = GenerationReader(pool, storage)
        app.state.creator = GenerationCreator(pool, price_per_pose=settings.price_per_pose,
                                              queued_check_seconds=settings.queued_check_seconds, shared=shared)
        try:
            yield
        finally:
            await app.state.generation_reader.aclose()
            await app.state.creator.aclose()
            if app.state.enqueuer is not None:
                app.state.enqueuer.close()
            await storage.aclose()
            redis.close()
            await pool.close()

    handlers: list[Any] = [GenerationController, PoseController, CreditController, MetricsController,
                           OperatorController, ConsoleController, health, liveness, image, metrics_prometheus]
    if settings.flux_webhooks:
        handlers.append(flux_webhook)
    router = Router(path=API_PREFIX, route_handlers=handlers, dependencies=DEPENDENCIES)
    middleware: list[Any] = [http_metrics_middleware]
    if settings.rate_limit_per_minute:
        middleware.append(generation_rate_limit(settings.rate_limit_per_minute).middleware)
    app = Litestar(
        route_handlers=[router, metrics_prometheus],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=middleware,
        stores={STORE_NAME: rate_limit_store(settings.redis_url)},
        openapi_config=OpenAPIConfig(title="Pose Generator API", version=__version__, path="/schema"),
        request_max_body_size=MAX_BODY_BYTES,
        # The operators' console page (app/api/admin_console.py).
        template_config=TemplateConfig(directory=Path(__file__).parent / "templates", engine=JinjaTemplateEngine),
        debug=False,
    )
    app.state.settings = settings
    BUILD_INFO.revision = settings.revision
    app.state.flux_webhook_secret = webhook_secret(settings)
    app.state.metrics_registry = scrape_registry(settings.prometheus_multiproc_dir)
    create_route_series(app)
    return app
