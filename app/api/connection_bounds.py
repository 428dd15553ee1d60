"""Bounded work per connection: what one client may make an API process hold before it is answered.

uvicorn (0.55) with httptools, our server, bounds neither the size nor the time of a request head: llhttp
keeps no limit of its own and httptools buffers a header until its end, so an unfinished 20 MB header is
20 MB of memory; and uvicorn arms no timer before a connection's first request (its keep-alive timer starts
after a response, and any byte stops it), so a client sending one header line every few seconds holds its
connection forever. h11, uvicorn's other protocol, bounds the size (``h11_max_incomplete_event_size``) but
not the time, and parses at a fraction of httptools' speed.

:class:`BoundedHttpToolsProtocol` is uvicorn's own httptools protocol with both bounds: a request head (its
line and headers) over ``max_head_bytes`` is answered 431, one not complete ``head_timeout_seconds`` after
its connection opened (the first request) or its first byte arrived (later ones) is answered 408; either
way the connection is then closed. The answer is sent before a lingering close (RFC 9112 section 9.6: the
write side is shut, what the client still sends is read and dropped for up to ``LINGER_SECONDS``), so the
client reads it instead of a reset. A connection that never sent a byte is closed without an answer.
:func:`server_options` passes it to uvicorn with the server's own bounds: ``limit_concurrency``,
``timeout_keep_alive`` and the listen backlog. uvicorn answers every request 503 while its connections are at
``limit_concurrency``, idle ones included, so a flood of slow connections would shut everyone out until the
head timeout; instead a new connection at the cap closes the connection waiting longest for a request.
"""

from __future__ import annotations

import asyncio
import functools
import json
import weakref
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app import metric_catalogue
from app.settings import Settings

if TYPE_CHECKING:
    from prometheus_client import Counter
    from uvicorn.server import ServerState

# How long a refused connection still reads (and drops) what its client sends after the answer, so that the
# client's kernel does not receive a reset before it has read the answer.
LINGER_SECONDS = 2.0
# Connections the kernel queues for the process to accept; Linux caps it at net.core.somaxconn.
LISTEN_BACKLOG = 2048
# A read is handed to the parser in pieces of at most this many bytes (see data_received).
FEED_BYTES = 8192


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options that bound a connection's work, from the settings."""
    return {
        "http": functools.partial(BoundedHttpToolsProtocol, max_head_bytes=settings.api_max_header_bytes,
                                  head_timeout_seconds=settings.api_header_timeout_seconds),
        "limit_concurrency": settings.api_max_connections,
        "timeout_keep_alive": settings.api_keep_alive_seconds,
        "backlog": LISTEN_BACKLOG,
    }


@functools.cache
def _refused_heads() -> Counter:
    # Made at the first connection, in the server process: prometheus-client picks its multiprocess mode when it
    # is first imported, which must follow `posegen api` setting PROMETHEUS_MULTIPROC_DIR.
    counter = metric_catalogue.counter("pose_http_request_heads_refused_total")
    for reason in ("too_large", "too_slow", "crowded_out", "malformed"):
        counter.labels(reason)
    return counter


# Per server, its connections waiting for a request (new, idle after a response, or still sending a head), the one
# waiting longest first.
_waiting_by_server: weakref.WeakKeyDictionary[ServerState, dict[BoundedHttpToolsProtocol, None]] = (
    weakref.WeakKeyDictionary())


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size and a time bound on each request head (see the module)."""

    def __init__(self, *args: Any, max_head_bytes: int, head_timeout_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes = max_head_bytes
        self.head_timeout_seconds = head_timeout_seconds
        self._refused_heads = _refused_heads()
        self._reading_head = True  # from the connection's start, and from each message's first byte
        self._head_started = False
        self._head_bytes = 0  # of the head being read, fed to the parser before the piece being fed
        self._feeding = 0  # bytes of the piece being fed
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._waiting = _waiting_by_server.setdefault(self.server_state, {})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.head_timeout_seconds, self._head_too_slow)
        self._waiting[self] = None
        # At the cap (uvicorn's limit_concurrency, which answers every request 503 while the connections are at
        # it), the connection waiting longest for a request makes room: a flood of slow or idle connections then
        # crowds out its own oldest, not every new client. With none waiting, every connection is busy: the 503s
        # are uvicorn's overload answer.
        if self.limit_concurrency is not None and len(self.connections) >= self.limit_concurrency:
            longest = next(iter(self._waiting))
            if longest is not self:
                longest._crowd_out()

    def connection_lost(self, exc: Exception | None) -> None:
        self._waiting.pop(self, None)
        self._stop_head_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Fed in pieces of FEED_BYTES, so that the bytes of a head being read are known within a piece even when
        # a read also holds the end of the previous request. A piece in which a head starts counts whole; a head
        # that completes is measured exactly (on_headers_complete). The parser holds at most the bound plus a piece.
        whole = memoryview(data) if len(data) > FEED_BYTES else data
        for start in range(0, len(data), FEED_BYTES):
            if self._refused or self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # refused (what arrives while lingering is dropped), closed, or upgraded
            piece = whole[start:start + FEED_BYTES] if whole is not data else data
            self._feeding = len(piece)
            super().data_received(piece)  # type: ignore[arg-type]
            if self._reading_head and not self._refused:
                self._head_bytes += self._feeding
                if self._head_bytes > self.max_head_bytes:
                    self._refuse_too_large()

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._reading_head, self._head_started, self._head_bytes = True, True, 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_seconds, self._head_too_slow)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._reading_head, self._head_started = False, False
        self._waiting.pop(self, None)
        self._stop_head_timer()
        # Only a head that may be over the bound is measured: its line (method, target, version) and headers.
        if self._head_bytes + self._feeding > self.max_head_bytes and self._head_size() > self.max_head_bytes:
            self._refuse_too_large()
            return
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # idle, waiting for the next request
            self._waiting[self] = None

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _head_size(self) -> int:
        return 16 + len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._head_started:
            self.transport.close()  # nothing sent (an idle or speculative connection): nothing to answer
            return
        self._refuse(HTTPStatus.REQUEST_TIMEOUT, "too_slow",
                     f"The request line and headers did not arrive within {self.head_timeout_seconds:g} s")

    def _crowd_out(self) -> None:
        self._waiting.pop(self, None)
        self._stop_head_timer()
        if self._head_started:
            self._refused_heads.labels("crowded_out").inc()
        self.transport.close()
        # Counted out now, not when the loop reports the close: the request that made room must not be answered
        # 503 because its head was read first.
        self.connections.discard(self)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its parser cannot read (never reaching the app, so never in
        ``pose_http_requests_total``): the same problem answer and lingering close as the other refusals,
        counted as ``malformed``."""
        self._refuse(HTTPStatus.BAD_REQUEST, "malformed", msg)

    def _refuse_too_large(self) -> None:
        self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too_large",
                     f"The request line and headers are over {self.max_head_bytes} bytes")

    def _refuse(self, status: HTTPStatus, reason: str, detail: str) -> None:
        self._refused = True
        self._waiting.pop(self, None)
        self._stop_head_timer()
        self._refused_heads.labels(reason).inc()
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head behind a response in progress: that response is sent, then the connection closes.
            self.cycle.keep_alive = False
            return
        body = json.dumps({"type": "about:blank", "title": status.phrase, "status": int(status),
                           "detail": detail}).encode()
        head = [f"HTTP/1.1 {int(status)} {status.phrase}".encode()]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [b"content-type: application/problem+json", b"content-length: %d" % len(body), b"connection: close"]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()
