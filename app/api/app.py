"""The Litestar app factory: builds the app from a :class:`~app.settings.Settings` object."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from litestar import Litestar, Router
from litestar.middleware.base import DefineMiddleware
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.plugins.problem_details import ProblemDetailsPlugin
from litestar.template.config import TemplateConfig

from app import API_PREFIX, __version__
from app.api.admin_console import CONSOLE_PATH, ConsoleController
from app.api.admin_metrics import MetricsController
from app.api.admin_operations import OperatorController
from app.api.checkout import CheckoutCheck
from app.api.console_sessions import ConsoleSessions, SignInForms
from app.api.credits import CreditController
from app.api.deps import DEPENDENCIES
from app.api.enqueuer import BatchEnqueuer
from app.api.error_responses import EXCEPTION_HANDLERS
from app.api.flux_webhooks import flux_webhook
from app.api.generation_creates import GenerationCreator
from app.api.generation_reads import GenerationReader
from app.api.generations import GenerationController
from app.api.health import health, liveness
from app.api.images import image
from app.api.negotiation import negotiation_middleware
from app.api.openapi import SCHEMA_ASSETS_ROUTER, openapi_config
from app.api.poses import PoseController
from app.api.prometheus_metrics import (
    BUILD_INFO,
    count_requests,
    create_route_series,
    metrics_prometheus_route,
    scrape_registry,
)
from app.api.rate_limit import CallerLimitMiddleware, CallerLimits, document_read_limit
from app.api.schemas import create_generation_request_type
from app.api.security_headers import with_security_headers
from app.api.state import API_STATE_KEY, ApiState
from app.connections import async_redis_client, pg_pool, redis_client
from app.domain.intake import IntakeGate
from app.observability import tracing
from app.observability.asgi import instrument_asgi
from app.providers.flux_webhooks import webhook_secret
from app.queue import make_queue
from app.settings import Settings
from app.storage.factory import build_storage

MAX_BODY_BYTES = 64 * 1024


def create_app(settings: Settings) -> PoseGeneratorApp:
    caller_limits = CallerLimits(async_redis_client(settings.redis_url, sentinel=settings.redis_sentinel), settings)
    flux_webhook_secret = webhook_secret(settings)
    sign_in_forms = SignInForms(settings.jwt_secret)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        checkout_check = CheckoutCheck()
        pool = pg_pool(
            settings.database_url, min_size=1, max_size=settings.db_pool_size, connect_timeout=2, timeout=5,
            # A coalesced batch carries many requests: a connection the server has closed must be
            # replaced before it is handed out, not discover it by failing them all.
            check=checkout_check, connection_class=checkout_check.connection_class(),
            max_idle=60,
        )
        await pool.open(wait=False)
        redis = redis_client(settings.redis_url, sentinel=settings.redis_sentinel)
        storage = build_storage(settings, api_url_prefix=f"{settings.public_base_url}{API_PREFIX}/images")
        # With APM on, each request enqueues its own job and runs its own create, so that both carry the
        # request's trace; otherwise concurrent requests share Redis and database transactions.
        shared = not tracing.enabled()
        queue = make_queue(redis)
        state = ApiState(
            settings=settings, pool=pool, checkout_check=checkout_check, redis=redis, queue=queue,
            intake_gate=IntakeGate(redis),
            console_sessions=ConsoleSessions(redis, idle_seconds=settings.console_idle_timeout_seconds,
                                             max_seconds=settings.console_session_max_seconds),
            sign_in_forms=sign_in_forms, enqueuer=BatchEnqueuer(queue) if shared else None, storage=storage,
            generation_reader=GenerationReader(pool, storage),
            creator=GenerationCreator(pool, price_per_pose=settings.price_per_pose,
                                      queued_check_seconds=settings.queued_check_seconds, shared=shared),
            caller_limits=caller_limits, flux_webhook_secret=flux_webhook_secret,
        )
        app.state[API_STATE_KEY] = state
        try:
            yield
        finally:
            await state.generation_reader.aclose()
            await state.creator.aclose()
            if state.enqueuer is not None:
                state.enqueuer.close()
            await storage.aclose()
            await caller_limits.aclose()
            redis.close()
            await pool.close()

    metrics_prometheus = metrics_prometheus_route(scrape_registry(settings.prometheus_multiproc_dir))
    handlers: list[Any] = [GenerationController, PoseController, CreditController, MetricsController,
                           OperatorController, ConsoleController, health, liveness, image, metrics_prometheus]
    if settings.flux_webhooks:
        handlers.append(flux_webhook)
    router = Router(
        path=API_PREFIX, route_handlers=handlers, dependencies=DEPENDENCIES,
        middleware=[negotiation_middleware],
        # POST /generations takes at most POSEGEN_MAX_POSES poses: its body type is built from the settings.
        signature_namespace={
            "CreateGenerationRequest": create_generation_request_type(settings.max_poses_per_generation),
        },
    )
    app = PoseGeneratorApp(
        route_handlers=[router, metrics_prometheus, SCHEMA_ASSETS_ROUTER],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        plugins=[ProblemDetailsPlugin()],
        # Per-caller limits (app/api/rate_limit.py): after routing, before content negotiation and the handler.
        middleware=[DefineMiddleware(CallerLimitMiddleware, limits=caller_limits)],
        openapi_config=openapi_config(__version__),
        request_max_body_size=MAX_BODY_BYTES,
        # The operators' console page (app/api/admin_console.py).
        template_config=TemplateConfig(directory=Path(__file__).parent / "templates", engine=JinjaTemplateEngine),
        debug=False,
        # Logs are configured once per process, before the app is built (app.observability.logging); Litestar's
        # default config would replace the root logger's JSON handler with a plain-text one on stderr.
        logging_config=None,
    )
    BUILD_INFO.revision = settings.revision
    create_route_series(app)
    if settings.read_limit_per_minute:
        document_read_limit(app)
    # Here, so the app a test builds is the one uvicorn serves: every request counted as answered, HEAD answered
    # as GET, then the optional integrations' wrappers, each seeing the request before Litestar does.
    app.wrap(lambda litestar: instrument_asgi(with_security_headers(
        answer_head_as_get(app, count_requests(litestar)), CONSOLE_PATH)))
    return app


class PoseGeneratorApp(Litestar):
    """The Litestar app served through ASGI wrappers of its own (:meth:`wrap`), outside Litestar's handling:
    ddtrace's middleware, for one, must run before Litestar puts itself into the request's scope."""

    __slots__ = ("_outer",)

    def wrap(self, wrapper: Callable[[ASGIApp], ASGIApp]) -> None:
        """Serve every ASGI event (requests and lifespan) with ``wrapper`` applied to Litestar's own handling."""
        self._outer = wrapper(super().__call__)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._outer(scope, receive, send)


ASGIApp = Any


def answer_head_as_get(app: Litestar, handler: ASGIApp) -> ASGIApp:
    """``handler`` (``app``'s own handling) with HEAD on every GET route (RFC 9110 9.3.2: the GET's status and
    headers, without the body), and an ``Allow`` on 405 and OPTIONS answers that lists every method of the
    resource, HEAD included (Litestar 2's own OPTIONS answer lists the methods of one handler of a path only:
    litestar#4169)."""
    allowed: dict[str, bytes] = {}
    for route in app.routes:
        methods = set(getattr(route, "methods", ()))
        if methods:
            methods |= {"HEAD"} if "GET" in methods else set()
            allowed[route.path_format] = ", ".join(sorted(methods)).encode()

    async def serve(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await handler(scope, receive, send)
            return
        if scope["method"] != "HEAD":
            options = scope["method"] == "OPTIONS"

            async def send_with_allow(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start" and (options or message["status"] == 405):
                    # A 405 is raised while routing, before the route's template is known: complete its Allow.
                    known = allowed.get(scope.get("path_template", ""))
                    message["headers"] = [
                        (name, known or (value + b", HEAD" if b"GET" in value else value)) if name == b"allow"
                        else (name, value)
                        for name, value in message.get("headers", [])
                    ]
                await send(message)

            await handler(scope, receive, send_with_allow)
            return

        async def send_without_body(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body"):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await handler({**scope, "method": "GET"}, receive, send_without_body)

    return serve
