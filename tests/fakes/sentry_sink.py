"""A fake Sentry: a real HTTP server on 127.0.0.1 that accepts envelopes and keeps what the SDK sent.

The SDK posts to ``/api/<project>/envelope/`` (gzip-compressed unless brotli is
installed); each envelope is a JSON header line followed by items, each an item
header line and a payload (``length`` bytes when the header says so, else up to
the next newline). Usage::

    with FakeSentry() as sentry:
        env = {"SENTRY_DSN": sentry.dsn}
        ...
        events = sentry.wait_for_events(lambda events: len(events) >= 2)
        assert b"secret" not in sentry.raw()
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.http_server import BackgroundHTTPServer, JSONHandler, Recorder, wait_until

_ENDPOINT = re.compile(r"^/api/(?P<project>\d+)/(?P<kind>envelope|store)/?$")


@dataclass(frozen=True)
class Item:
    headers: dict[str, Any]
    payload: bytes

    @property
    def type(self) -> str:
        return str(self.headers.get("type", ""))

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass(frozen=True)
class Envelope:
    project: str
    raw: bytes
    headers: dict[str, Any]
    items: list[Item]
    request_headers: dict[str, str]


class FakeSentry(BackgroundHTTPServer):
    """Start with ``with FakeSentry() as sentry``; point ``SENTRY_DSN`` at ``sentry.dsn``."""

    def __init__(self, project: str = "1", key: str = "publickey") -> None:
        self.project = project
        self.key = key
        self._envelopes: Recorder[Envelope] = Recorder()
        super().__init__(_handler_for(self), name="fake-sentry")

    @property
    def dsn(self) -> str:
        host, port = self.address
        return f"http://{self.key}@{host}:{port}/{self.project}"

    def envelopes(self) -> list[Envelope]:
        return self._envelopes.items()

    def events(self) -> list[dict[str, Any]]:
        """Error events (item type ``event``), decoded."""
        return [item.json() for env in self.envelopes() for item in env.items if item.type == "event"]

    def raw(self) -> bytes:
        """Every byte the SDK sent, decompressed and concatenated: search it for what must never leave."""
        return b"\n".join(env.raw for env in self.envelopes())

    def wait_for_events(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        def describe(events: list[dict[str, Any]]) -> Any:
            return [(e.get("message") or e.get("exception", {}).get("values", [{}])[-1].get("type"), e.get("tags"))
                    for e in events]

        return wait_until(self.events, predicate, timeout, "Sentry events", describe)


def _handler_for(sink: FakeSentry) -> type[BaseHTTPRequestHandler]:
    class Handler(JSONHandler):
        def do_POST(self) -> None:
            body = self._read_body()
            match = _ENDPOINT.match(self.path.split("?", 1)[0])
            if match is None:
                self._answer(404, {"detail": "not a Sentry endpoint"})
                return
            try:
                raw = decompress(body, self.headers.get("Content-Encoding", ""))
                if match["kind"] == "store":
                    headers, items = {}, [Item({"type": "event"}, raw)]
                else:
                    headers, items = parse_envelope(raw)
            except (ValueError, OSError, zlib.error) as exc:
                self._answer(400, {"detail": f"undecodable: {exc}"})
                return
            sink._envelopes.add(Envelope(match["project"], raw, headers, items, dict(self.headers.items())))
            self._answer(200, {"id": headers.get("event_id")})

    return Handler


def decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]  # only when the SDK found brotli installed

        return bytes(brotli.decompress(body))
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def parse_envelope(raw: bytes) -> tuple[dict[str, Any], list[Item]]:
    """Split an envelope into its header and items (see Sentry's envelope format)."""
    header_line, _, rest = raw.partition(b"\n")
    headers = json.loads(header_line or b"{}")
    items: list[Item] = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        if not item_line.strip():
            continue
        item_headers = json.loads(item_line)
        length = item_headers.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            if len(payload) != length:
                raise ValueError(f"item declares {length} bytes, {len(payload)} present")
            rest = rest.removeprefix(b"\n")
        items.append(Item(item_headers, payload))
    return headers, items
