"""Which exposition format a Prometheus scrape gets, for every metrics endpoint of the service: the API's
``/metrics-prometheus``, the exporter's and the workers' ``/metrics``.

The formats are the ones prometheus-client writes, chosen by RFC 9110 negotiation (:mod:`app.media_ranges`)
rather than prometheus-client's own pick (the first OpenMetrics or text member of ``Accept``, whatever its
weight): the Prometheus text format 0.0.4 unless the scraper prefers another by weight (so OpenMetrics,
which carries exemplars, only when it is preferred to text), 1.0.0 versions with the ``escaping`` the scraper
names (Prometheus 3 asks for ``allow-utf-8``; our names are the same in every scheme), and 406 when the
``Accept`` header allows none.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder
from prometheus_client.registry import Collector

from app.media_ranges import preferred

_ESCAPINGS = ("underscores", "allow-utf-8", "dots", "values")
# In the order of preference on equal weight: the classic text first (what every scraper reads), OpenMetrics last.
EXPOSITIONS = (
    "text/plain; version=0.0.4; charset=utf-8",
    *(f"text/plain; version=1.0.0; charset=utf-8; escaping={escaping}" for escaping in _ESCAPINGS),
    *(f"application/openmetrics-text; version=1.0.0; charset=utf-8; escaping={escaping}" for escaping in _ESCAPINGS),
)
NOT_ACCEPTABLE = ("The Accept header allows none of the formats served here: text/plain (version 0.0.4 or 1.0.0) "
                  "and application/openmetrics-text (version 1.0.0)")

Encoder = Callable[[Collector], bytes]


def choose_exposition(accept: str | None) -> tuple[Encoder, str] | None:
    """The encoder and ``Content-Type`` for a scrape with this ``Accept`` header; None: answer 406."""
    chosen = preferred(accept, EXPOSITIONS)
    # prometheus-client reads the one format we chose, with its version and escaping, as its own Accept header.
    return None if chosen is None else choose_encoder(chosen)


def metrics_wsgi_app(registry: Collector) -> Callable[..., Iterable[bytes]]:
    """prometheus-client's WSGI app for ``registry`` (its ``name[]`` filter, gzip, 405 for methods other than GET)
    with the format negotiated here: 406 when the ``Accept`` header allows none."""
    served = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "GET":
            chosen = preferred(environ.get("HTTP_ACCEPT"), EXPOSITIONS)
            if chosen is None:
                start_response("406 Not Acceptable", [("Content-Type", "text/plain; charset=utf-8")])
                return [f"{NOT_ACCEPTABLE}\n".encode()]
            environ = {**environ, "HTTP_ACCEPT": chosen}
        return served(environ, start_response)

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the JSON logs."""


def serve_metrics(host: str, port: int, registry: Collector) -> tuple[WSGIServer, threading.Thread]:
    """Serve :func:`metrics_wsgi_app` on ``host:port`` from a daemon thread, as prometheus-client's
    ``start_http_server`` does (an IPv6 ``host`` binds an IPv6 socket). Raises OSError when the port is taken."""

    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    server = make_server(str(address[0]), port, metrics_wsgi_app(registry), Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="posegen-metrics-endpoint", daemon=True)
    thread.start()
    return server, thread
