"""Datadog APM with ddtrace: on when ``DD_TRACE_ENABLED`` is true, and then only here is ``ddtrace`` imported.

:func:`init_tracing` runs once per process before the app or the worker is built.
It patches the libraries whose calls we want as spans (psycopg, redis, httpx, rq),
names service, env and version, and adds ``dd.trace_id``/``dd.span_id`` to every
log entry's metadata. :func:`trace_requests` wraps the API in ddtrace's ASGI
middleware (there is no Litestar integration) and :func:`with_route_span_name` names request spans by route.

One trace follows a generation from the request that created it to the worker
that ran it: the API stores the request's context with the generation
(:func:`current_trace_context`), RQ carries it in the job's meta, and the worker
opens the generation's span in that trace (:func:`generation_span`) even when
the job was re-enqueued by the reaper in another trace. The ddtrace agent
address and flush interval are ddtrace's own variables (``DD_TRACE_AGENT_URL``
or ``DD_AGENT_HOST``/``DD_TRACE_AGENT_PORT``, ``DD_TRACE_WRITER_INTERVAL_SECONDS``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from app import __version__
from app.observability.logging import add_processor
from app.settings import Settings

if TYPE_CHECKING:
    from ddtrace.trace import Tracer

    from app.observability.asgi_types import ASGIApp, Receive, Scope, Send

T = TypeVar("T")
PATCHED_LIBRARIES = ("psycopg", "redis", "httpx", "rq")

_tracer: Tracer | None = None


def init_tracing(settings: Settings) -> bool:
    """Switch ddtrace on for this process when ``DD_TRACE_ENABLED`` (``settings.trace_enabled``) asks for it;
    returns whether it is on."""
    global _tracer
    if not settings.trace_enabled:
        return False
    # ddtrace configures itself from the environment: hand it the service, env and version the settings
    # resolved (the operator's DD_* values, else ours) before it is imported.
    os.environ["DD_TRACE_ENABLED"] = "true"  # ddtrace knows fewer spellings of "on" than the settings
    os.environ["DD_SERVICE"] = settings.dd_service
    os.environ["DD_ENV"] = settings.dd_env or settings.environment
    os.environ["DD_VERSION"] = settings.dd_version or __version__
    import ddtrace
    from ddtrace.trace import tracer

    ddtrace.patch(**dict.fromkeys(PATCHED_LIBRARIES, True))
    config: Any = ddtrace.config
    if settings.dd_rq_distributed_tracing is None:
        # The worker's job span continues the enqueueing request's trace through the job's meta.
        config.rq.distributed_tracing_enabled = True
        config.rq_worker.distributed_tracing_enabled = True
    if settings.dd_httpx_distributed_tracing is None:
        # The image provider and Supabase run no Datadog; trace headers would only tell them our ids.
        config.httpx.distributed_tracing = False
    _tracer = tracer
    add_processor(_add_trace_ids)
    return True


def _add_trace_ids(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    if _tracer is not None:
        context = _tracer.current_trace_context()
        if context is not None and context.trace_id:
            ids = _tracer.get_log_correlation_context(context)
            event_dict["dd.trace_id"] = ids["dd.trace_id"]
            event_dict["dd.span_id"] = ids["dd.span_id"]
    return event_dict


def with_route_span_name(app: ASGIApp) -> ASGIApp:
    """Serve one HTTP request with ``app``, naming its request span ``METHOD /route/{template}``."""
    from ddtrace.contrib.asgi import span_from_scope

    async def name_span_by_route(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_naming_span(message: MutableMapping[str, Any]) -> None:
            # Litestar has written the matched route template into the scope by the time it answers;
            # the middleware finishes the span with the response's last byte, so name it before.
            template = scope.get("path_template")
            span = span_from_scope(scope)
            if message["type"] == "http.response.start" and span is not None and template:
                span.resource = f"{scope['method']} {template}"
                span.set_tag("http.route", template)
            await send(message)

        await app(scope, receive, send_naming_span)

    return name_span_by_route


def trace_requests(app: ASGIApp) -> ASGIApp:
    """``app`` in ddtrace's ASGI middleware: a span per request (applied by
    :func:`app.observability.asgi.instrument_asgi` when tracing is on)."""
    from ddtrace.contrib.asgi import TraceMiddleware

    return TraceMiddleware(app)  # type: ignore[no-any-return]


def enabled() -> bool:
    """Whether :func:`init_tracing` switched ddtrace on in this process."""
    return _tracer is not None


def current_trace_context() -> dict[str, str] | None:
    """The active trace as propagation headers, to store with a generation; None when tracing is off."""
    if _tracer is None:
        return None
    from ddtrace.propagation.http import HTTPPropagator

    context = _tracer.current_trace_context()
    if context is None or not context.trace_id:
        return None
    headers: dict[str, str] = {}
    HTTPPropagator.inject(context, headers)
    return headers


# OpenMetrics: an exemplar's label names and values together are at most 128 UTF-8 characters.
EXEMPLAR_LABELS_MAX_CHARS = 128


def exemplar_labels(generation_id: str | None = None) -> dict[str, str] | None:
    """Exemplar labels of an observation made now: ``{"trace_id", "generation_id"}``; None when not traced.

    ``trace_id`` is the lower 64 bits in decimal, the id Datadog's trace URLs and logs use. ``generation_id``
    (which may come from a client's path) is left out when it would take the labels past OpenMetrics'
    :data:`EXEMPLAR_LABELS_MAX_CHARS`: prometheus-client raises on such an exemplar.
    """
    if _tracer is None:
        return None
    context = _tracer.current_trace_context()
    if context is None or not context.trace_id:
        return None
    labels = {"trace_id": str(context.trace_id & 0xFFFFFFFFFFFFFFFF)}
    if generation_id:
        with_generation = {**labels, "generation_id": generation_id}
        if sum(len(k) + len(v) for k, v in with_generation.items()) <= EXEMPLAR_LABELS_MAX_CHARS:
            labels = with_generation
    return labels


@contextmanager
def generation_span(
    generation_id: str, user_id: str, attempt: int, pose_count: int, trace_context: dict[str, str] | None
) -> Iterator[None]:
    """The span of one generation's processing, in the trace of the request that created it.

    ``trace_context``: the propagation headers stored with the generation (:func:`current_trace_context`).
    """
    if _tracer is None:
        yield
        return
    from ddtrace.propagation.http import HTTPPropagator

    parent: Any = _tracer.current_trace_context()
    stored = HTTPPropagator.extract(trace_context) if trace_context else None
    if stored is not None and stored.trace_id and (parent is None or parent.trace_id != stored.trace_id):
        # A job the reaper re-enqueued arrives in a trace of its own: go back to the request's.
        parent = stored
    span = _tracer.start_span("posegen.generation", child_of=parent, resource="process_generation",
                              span_type="worker", activate=True)
    span.set_tag("generation.id", generation_id)
    span.set_tag("generation.attempt", str(attempt))
    span.set_tag("usr.id", user_id)
    span.set_metric("generation.poses", pose_count)
    try:
        yield
    except BaseException as exc:
        span.set_exc_info(type(exc), exc, exc.__traceback__)
        raise
    finally:
        span.finish()


def trace_pose(work: Awaitable[T], generation_id: str, pose_id: str, position: int) -> Awaitable[T]:
    """One pose's work in a span of its own (a child of the generation's); the work itself when off."""
    if _tracer is None:
        return work
    return _traced_pose(_tracer, work, generation_id, pose_id, position)


async def _traced_pose(tracer: Tracer, work: Awaitable[T], generation_id: str, pose_id: str, position: int) -> T:
    with tracer.trace("posegen.pose", resource=pose_id, span_type="worker") as span:
        span.set_tag("generation.id", generation_id)
        span.set_tag("pose.id", pose_id)
        span.set_metric("pose.position", position)
        return await work


def mark_error(exc: BaseException, error_type: str) -> None:
    """Flag the active span (a pose's) as failed with the seed error type; nothing when tracing is off."""
    if _tracer is None:
        return
    span = _tracer.current_span()
    if span is None:
        return
    if exc.__traceback__ is not None:
        span.set_exc_info(type(exc), exc, exc.__traceback__)
    else:
        span.error = 1
        span.set_tag("error.type", type(exc).__name__)
        span.set_tag("error.message", str(exc))
    span.set_tag("error_type", error_type)


class _TracedCalls:
    """A proxy that runs the named coroutine methods of ``target`` in spans; other attributes pass through."""

    def __init__(self, target: Any, span_name: str, methods: tuple[str, ...]) -> None:
        self._target = target
        self._span_name = span_name
        self._methods = methods

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name not in self._methods or _tracer is None:
            return attribute
        tracer = _tracer
        span_name = self._span_name
        component = type(self._target).__name__

        async def traced(*args: Any, **kwargs: Any) -> Any:
            with tracer.trace(span_name, resource=f"{component}.{name}") as span:
                span.set_tag("component", component)
                return await attribute(*args, **kwargs)

        return traced


def traced_provider(provider: T) -> T:
    """The image provider with each ``generate`` call in a ``posegen.provider`` span; itself when off."""
    if _tracer is None:
        return provider
    return _TracedCalls(provider, "posegen.provider", ("generate",))  # type: ignore[return-value]


def traced_storage(storage: T) -> T:
    """The image storage with each ``put`` in a ``posegen.storage`` span; itself when off."""
    if _tracer is None:
        return storage
    return _TracedCalls(storage, "posegen.storage", ("put",))  # type: ignore[return-value]

