"""The API's ASGI wrappers of the optional integrations (Sentry, Datadog), applied by the app factory.

Each integration gives a wrapper of one HTTP request (:func:`app.observability.sentry.with_request_scope`,
:func:`app.observability.tracing.with_route_span_name`); here, and only here, is asked which
integrations are on, and other ASGI traffic (lifespan, websockets) passes by them untouched.
"""

from __future__ import annotations

from app.observability import sentry, tracing
from app.observability.asgi_types import ASGIApp, Receive, Scope, Send


def http_only(app: ASGIApp, serve_http: ASGIApp) -> ASGIApp:
    """An ASGI app that serves HTTP requests with ``serve_http`` and everything else with ``app``."""

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        await serve_http(scope, receive, send)

    return route


def instrument_asgi(app: ASGIApp) -> ASGIApp:
    """``app`` inside the wrappers of the integrations on in this process: Sentry's request scope (its events
    name the route), then Datadog's request span (named by route); ``app`` itself when both are off."""
    if sentry.sentry_enabled():
        app = http_only(app, sentry.with_request_scope(app))
    if tracing.enabled():
        app = tracing.trace_requests(http_only(app, tracing.with_route_span_name(app)))
    return app
