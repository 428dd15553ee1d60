"""Sentry error tracking: on when ``SENTRY_DSN`` is set, and then only here is ``sentry_sdk`` imported.

:func:`init_sentry` is called once per process (API, worker) before the app or
the worker is built: the Litestar integration reports unhandled API errors (tagged
with their route by :func:`with_request_scope`), the RQ integration reports failed
jobs, and :mod:`app.observability.error_reports` reports every failed pose and generation.

Secrets never leave the process: ``send_default_pii=False``, no stack-frame
variables, Sentry's own key scrubber with our header names added, and
:class:`SecretScrubber` on every event, transaction and breadcrumb, which
removes ``Bearer`` credentials, JWT-shaped strings and the configured keys
(JWT secret, FLUX key, Supabase key) wherever they appear.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from app import __version__
from app.errors import DomainError
from app.settings import Settings

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

    from app.observability.asgi_types import ASGIApp, Receive, Scope, Send

SENTRY_COMPONENT = "pose-generator"
FILTERED = "[Filtered]"
# Header and field names whose values are credentials, matched case-insensitively, "-" and "_" alike.
SENSITIVE_KEYS = frozenset({
    "authorization", "proxy_authorization", "cookie", "set_cookie", "x_key", "x_api_key", "apikey", "api_key",
    "jwt", "jwt_secret", "token", "access_token", "refresh_token", "flux_api_key", "supabase_service_key",
    "service_key", "password", "secret",
})
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")
# Any JWT (three base64url parts, the first an encoded JSON object), or a header part cut short.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){0,2}")
# Credentials carried in URLs: a signed image URL's signature (valid until it expires), tokens and keys in query
# strings, wherever they appear (request.query_string, request.url, breadcrumbs' URLs, messages).
_QUERY_CREDENTIAL = re.compile(r"(?i)(?<![\w-])(signature|sig|token|access_token|api_key|apikey|x-key)=[^&\s#'\"]+")
# Shorter configured values would match innocent text; real keys are much longer.
_MIN_SECRET_LENGTH = 8
_MAX_DEPTH = 40

_enabled = False
# The ASGI scope of the request being served; Litestar writes the matched route template into it.
_request_scope: ContextVar[MutableMapping[str, Any] | None] = ContextVar("posegen_request_scope", default=None)


def sentry_enabled() -> bool:
    """Whether :func:`init_sentry` switched Sentry on in this process."""
    return _enabled


class SecretScrubber:
    """Removes credentials from whatever Sentry is about to send."""

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretScrubber:
        return cls([settings.jwt_secret, settings.flux_api_key, settings.supabase_service_key])

    def event(self, event: Event, hint: Hint) -> Event:
        scrubbed: Event = self.scrub(event)
        return scrubbed

    def breadcrumb(self, crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        return self.scrub(crumb)

    def scrub(self, value: Any, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            return FILTERED
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, dict):
            return {key: FILTERED if _is_sensitive_key(key) else self.scrub(item, depth + 1)
                    for key, item in value.items()}
        if isinstance(value, list | tuple):
            # Header lists come as [name, value] pairs.
            if len(value) == 2 and isinstance(value[0], str) and _is_sensitive_key(value[0]):
                return [value[0], FILTERED]
            return [self.scrub(item, depth + 1) for item in value]
        return value

    def scrub_text(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, FILTERED)
        text = _BEARER.sub(f"Bearer {FILTERED}", text)
        text = _QUERY_CREDENTIAL.sub(lambda match: f"{match[1]}={FILTERED}", text)
        return _JWT.sub(FILTERED, text)


def _is_sensitive_key(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in SENSITIVE_KEYS


def init_sentry(settings: Settings, process: str) -> bool:
    """Initialise Sentry when ``SENTRY_DSN`` is set; returns whether it is on. ``process``: api or worker."""
    global _enabled
    if not settings.sentry_dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.litestar import LitestarIntegration
    from sentry_sdk.integrations.rq import RqIntegration
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    scrubber = SecretScrubber.from_settings(settings)
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.environment,
        release=f"posegen@{__version__}",
        # 0 means no Sentry performance tracing at all, rather than unsampled transactions on every request.
        traces_sample_rate=settings.sentry_traces_sample_rate or None,
        send_default_pii=False,
        # Frame variables hold reprs of the ASGI scope and request state (headers, cookies, body):
        # no scrubber can recognise every credential in them, so they are not sent at all.
        include_local_variables=False,
        in_app_include=["app"],
        integrations=[LitestarIntegration(), RqIntegration()],
        # A DomainError is a request our rules refused, answered 4xx (app/api/error_responses.py): not a fault.
        ignore_errors=[DomainError],
        event_scrubber=EventScrubber(denylist=[*DEFAULT_DENYLIST, *SENSITIVE_KEYS, "x-key", "x-api-key"],
                                     recursive=True),
        before_send=scrubber.event,
        before_send_transaction=scrubber.event,
        before_breadcrumb=scrubber.breadcrumb,
        # The image provider and Supabase run no Sentry; trace headers would only tell them our ids.
        trace_propagation_targets=[],
    )
    scope = sentry_sdk.get_global_scope()
    scope.set_tag("component", SENTRY_COMPONENT)
    scope.set_tag("process", process)
    scope.add_event_processor(_tag_route)
    _enabled = True
    return True


def _tag_route(event: Event, hint: Hint) -> Event:
    scope = _request_scope.get()
    if scope is not None:
        event.setdefault("tags", {})
        event["tags"].setdefault("route", scope.get("path_template") or "unmatched")
        event["tags"].setdefault("method", scope.get("method", ""))
    return event


def with_request_scope(app: ASGIApp) -> ASGIApp:
    """Serve one HTTP request with ``app``, remembering its scope so its Sentry events carry the route
    template (applied by :func:`app.observability.asgi.instrument_asgi` when Sentry is on)."""

    async def remember_request_scope(scope: Scope, receive: Receive, send: Send) -> None:
        token = _request_scope.set(scope)
        try:
            await app(scope, receive, send)
        finally:
            _request_scope.reset(token)

    return remember_request_scope
