"""The API's own Prometheus metrics, all of them, served at ``/metrics-prometheus`` (the seed's path); declared in
:mod:`app.metric_catalogue`.

Request counts and latency by route, and the sizes of coalesced database calls. Labels are the
route template (``/generations/{generation_id:str}``), never the raw path, so their number stays bounded.

With several server processes (``posegen api --workers N``) prometheus-client's
multiprocess mode is on: each process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` and a scrape, whichever process answers it, sums
them all. That mode serves only metrics built from the library's classes (the
process/GC collectors and exemplars are left out), and a gauge must say how its
processes combine (``multiprocess_mode``). The build info, a custom collector that is the same in every
process, is added to the summed scrape as it is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from litestar import Litestar, Response, get
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.params import HeaderParameter
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_406_NOT_ACCEPTABLE
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from app.api.openapi import error_responses
from app.metric_catalogue import counter, histogram
from app.observability import tracing
from app.observability.build_info import BuildInfoCollector
from app.observability.exposition import EXPOSITIONS, NOT_ACCEPTABLE, choose_exposition

REQUESTS = counter("pose_http_requests_total")
LATENCY = histogram("pose_http_request_duration_seconds",
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
# Observed by app.api.coalesce, one observation per coalesced database call.
BATCH_SIZE = histogram("pose_api_batch_size", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
# Registered once per process; the app factory sets the revision from its settings.
BUILD_INFO = BuildInfoCollector("unknown")
REGISTRY.register(BUILD_INFO)
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
# Labelled children by (method, route template, status): both sets are bounded, and looking a child up
# here skips prometheus-client's label validation and lock on every request.
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


# Status codes whose request counters exist at 0 on every route from start-up. A labelled counter born at
# its first increment hides that increment from rate()/increase(): the first burst of 503s on a route
# would read as a 0% error ratio. These are the codes the API answers with (successes, the client errors
# it raises, the server errors of a bug or a dependency down).
ZERO_STATUS_CODES = ("200", "201", "202", "400", "401", "403", "404", "409", "422", "429", "499", "500", "503")
_PRECREATED_METHODS = _METHODS - {"HEAD", "OPTIONS"}


def create_route_series(app: Litestar) -> None:
    """Create every route's request counters (methods x :data:`ZERO_STATUS_CODES`) and latency histograms
    at 0, plus the 404s and 405s of requests that match no route."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for method in sorted(set(route.methods) & _PRECREATED_METHODS):
            LATENCY.labels(method, route.path_format)
            for code in ZERO_STATUS_CODES:
                REQUESTS.labels(method, route.path_format, code)
    for name in sorted(_PRECREATED_METHODS):
        LATENCY.labels(name, "unmatched")
        for code in ("404", "405"):
            REQUESTS.labels(name, "unmatched", code)


# What a request the client abandoned (hung up before the whole answer was sent) is counted as: nginx's "client
# closed request". A 4xx, so it stays out of every 5xx ratio and SLI: the server did not fail, the client left.
CLIENT_CLOSED_REQUEST = 499


def count_requests(app: ASGIApp) -> ASGIApp:
    """``app`` (Litestar's own handling) with every HTTP request counted and timed by the status the client got.

    An ASGI wrapper outside Litestar, not a Litestar middleware: answers Litestar gives further out (the rate
    limiter's 429, the 404/405 of a request that matches no route or method, a 500 of an unhandled error) are
    counted as sent, and requests that match no route are counted under ``route="unmatched"`` (methods outside
    :data:`_METHODS` as ``OTHER``), so scans are seen and the label sets stay bounded. A request whose client
    disconnected before the last byte of the answer is counted as :data:`CLIENT_CLOSED_REQUEST`, whatever the
    server would have answered."""

    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        began = time.perf_counter()
        status: int | None = None
        answered = abandoned = False
        exemplar: dict[str, str] | None = None

        async def receive_watching() -> ReceiveMessage:
            nonlocal abandoned
            message = await receive()
            if message["type"] == "http.disconnect" and not answered:
                abandoned = True  # whatever is sent from now on reaches nobody
            return message

        async def send_watching(message: Message) -> None:
            nonlocal status, exemplar, answered, abandoned
            if message["type"] == "http.response.start":
                status = message["status"]
                # With tracing on, the request's trace (and the generation it reads, if any) becomes the
                # bucket's exemplar in OpenMetrics scrapes. Read now: the request span ends with the last byte.
                if tracing.enabled():
                    exemplar = tracing.exemplar_labels((scope.get("path_params") or {}).get("generation_id"))
            try:
                await send(message)
            except OSError:
                abandoned = not answered
                raise
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True

        try:
            await app(scope, receive_watching, send_watching)
        except BaseException:
            if status is None:
                status = 500  # the server answers an error that escaped the app with a 500
            raise
        finally:
            if abandoned:
                status = CLIENT_CLOSED_REQUEST
            _observe(scope, status or CLIENT_CLOSED_REQUEST, time.perf_counter() - began, exemplar)

    return counted


def _observe(scope: Scope, status: int, seconds: float, exemplar: dict[str, str] | None) -> None:
    route = scope.get("path_template") or "unmatched"  # type: ignore[typeddict-item]
    method = _method(scope) if _method(scope) in _METHODS else "OTHER"
    key = (method, route, status)
    children = _children.get(key)
    if children is None:
        children = _children[key] = (REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route))
    children[0].inc()
    children[1].observe(seconds, exemplar)


def scrape_registry(multiprocess_dir: Path | None) -> CollectorRegistry:
    """What ``/metrics-prometheus`` serves: this process's registry, or the sum of every process's files
    plus the build info (a custom collector, the same in every process, so served as it is)."""
    if multiprocess_dir is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiprocess_dir))
    registry.register(BUILD_INFO)
    return registry


def metrics_prometheus_route(registry: CollectorRegistry) -> HTTPRouteHandler:
    """``GET /metrics-prometheus`` serving ``registry`` (:func:`scrape_registry`), in the exposition the
    ``Accept`` header asks for (406 when none it names is served)."""

    @get(["/metrics-prometheus"], summary="Prometheus metrics of this API process", tags=["metrics"],
         media_type="text/plain", sync_to_thread=False, responses=error_responses(406),
         opt={"produces": list(EXPOSITIONS)})
    def metrics_prometheus(
        accept: Annotated[str | None, HeaderParameter(name="Accept", required=False)] = None,
    ) -> Response[bytes]:
        chosen = choose_exposition(accept)
        if chosen is None:
            raise HTTPException(status_code=HTTP_406_NOT_ACCEPTABLE, detail=f"{NOT_ACCEPTABLE} (Accept: {accept})")
        encode, content_type = chosen
        return Response(encode(registry), media_type=content_type)

    return metrics_prometheus


def _method(scope: Scope) -> str:
    """The request method of an HTTP scope; a WebSocket scope has none (its handshake is a GET)."""
    return scope["method"] if scope["type"] == ScopeType.HTTP else "GET"
