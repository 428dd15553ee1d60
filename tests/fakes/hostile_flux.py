"""A broken or hostile FLUX: the fake FLUX API (:mod:`tests.fakes.flux_server`) answering what such a provider
could, and an internal page that records who asked for it.

:class:`HostileFlux` is :class:`tests.fakes.flux_server.FakeFlux` with attributes that, when set, replace one
honest answer (set them from the test; the worker is another process and sees only the answers):

- ``foreign_polling_url``: the submission's ``polling_url`` (a URL on another host);
- ``poll_redirect``: every poll is answered ``302`` to this URL;
- ``foreign_sample_url``: a Ready task's ``result.sample``;
- ``flood``: ``(stage, size)`` with stage ``poll`` or ``sample``: that answer is ``size`` bytes long, streamed
  without a ``Content-Length`` (valid JSON of a Pending task, or a PNG signature and zeros), never held in
  memory here;
- ``sample_bytes``: the bytes served as the sample (e.g. :func:`png_declaring` a huge image), with the
  headers ``sample_headers`` (e.g. ``Content-Encoding: gzip``);
- ``submit_error``: the submission is answered ``400`` with this body (e.g. one with a NUL byte).

:class:`InternalPage` stands for what must never be fetched on FLUX's say-so (an internal admin page, a metadata
service): it answers every request with :data:`SECRET_PAGE` and records each request's method, path and headers.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.flux_server import FakeFlux
from tests.fakes.http_server import BackgroundHTTPServer, JSONHandler, Recorder

SECRET_PAGE = "internal-only page: db password hunter2"
_ZEROS = b"\0" * (1024 * 1024)
_PAD = b"x" * (1024 * 1024)


def png_declaring(width: int, height: int) -> bytes:
    """A small, well-formed PNG whose header declares ``width`` x ``height`` pixels (its pixel data is a few bytes,
    so it does not decode to that size)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


class HostileFlux(FakeFlux):
    """Start with ``with HostileFlux(latency=0.1) as flux``, then set the attributes of the misbehaviour wanted."""

    def __init__(self, **kwargs: Any) -> None:
        self.foreign_polling_url: str | None = None
        self.poll_redirect: str | None = None
        self.foreign_sample_url: str | None = None
        self.flood: tuple[str, int] | None = None
        self.sample_bytes: bytes | None = None
        self.sample_headers: dict[str, str] = {}
        self.submit_error: bytes | None = None
        self.flood_bytes_sent = 0  # of the last flood, before the client hung up
        super().__init__(**kwargs)

    def polling_url(self, task_id: str) -> str:
        return self.foreign_polling_url or super().polling_url(task_id)

    def sample_url(self, task_id: str) -> str:
        return self.foreign_sample_url or super().sample_url(task_id)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        honest: Any = super()._handler_class()
        fake = self

        class Handler(honest):  # type: ignore[misc, valid-type]
            def _submit(self, model: str, body: bytes) -> None:
                if fake.submit_error is None:
                    super()._submit(model, body)
                else:
                    self._send(400, fake.submit_error, "application/json")

            def _poll(self, task_id: str) -> None:
                if fake.poll_redirect is not None:
                    self._send(302, b"", "text/plain", {"Location": fake.poll_redirect})
                elif fake.flood is not None and fake.flood[0] == "poll":
                    head = b'{"id": "' + task_id.encode() + b'", "status": "Pending", "pad": "'
                    self._flood(head, fake.flood[1], b'"}', "application/json", _PAD)
                else:
                    super()._poll(task_id)

            def _sample(self, task_id: str) -> None:
                if fake.flood is not None and fake.flood[0] == "sample":
                    self._flood(b"\x89PNG\r\n\x1a\n", fake.flood[1], b"", "image/png", _ZEROS)
                elif fake.sample_bytes is not None:
                    self._send(200, fake.sample_bytes, "image/png", fake.sample_headers)
                else:
                    super()._sample(task_id)

            def _flood(self, head: bytes, size: int, tail: bytes, content_type: str, filler: bytes) -> None:
                """``size`` bytes in all, delimited by closing the connection (no Content-Length)."""
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                sent = 0
                try:
                    self.wfile.write(head)
                    sent = len(head)
                    while sent < size - len(tail):
                        piece = filler[: min(len(filler), size - len(tail) - sent)]
                        self.wfile.write(piece)
                        sent += len(piece)
                    self.wfile.write(tail)
                    sent += len(tail)
                except OSError:
                    pass  # the client hung up: what a capped reader does
                finally:
                    fake.flood_bytes_sent = sent

        return Handler


@dataclass(frozen=True)
class PageRequest:
    method: str
    path: str
    headers: dict[str, str]


class InternalPage(BackgroundHTTPServer):
    """``with InternalPage() as page``: ``page.requests()`` lists what it was asked for."""

    def __init__(self) -> None:
        self._recorder: Recorder[PageRequest] = Recorder()
        recorder = self._recorder

        class Handler(JSONHandler):
            def _record(self) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                recorder.add(PageRequest(self.command, self.path, headers))
                self._read_body()
                self._send(200, SECRET_PAGE.encode(), "text/plain")

            do_GET = do_POST = do_PUT = _record

        super().__init__(Handler, name="internal-page", poll_interval=0.05)

    def requests(self) -> list[PageRequest]:
        return self._recorder.items()
