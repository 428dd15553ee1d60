"""A fake Datadog trace agent: a real HTTP server on 127.0.0.1 that decodes the spans ddtrace sends.

It answers the trace intake (``PUT``/``POST`` ``/v0.4/traces`` and ``/v0.5/traces``,
msgpack-encoded) with ``{"rate_by_service": {}}``, and ``/info`` with the endpoints a
real agent lists, so the tracer picks its usual API version. Every other request
(telemetry, remote configuration, stats) is recorded and answered 200 with ``{}``.

Usage::

    with FakeDatadogAgent() as agent:
        env = {"DD_TRACE_ENABLED": "true", "DD_TRACE_AGENT_URL": agent.url}
        ...
        spans = agent.wait_for(lambda spans: any(s.name == "rq.worker.perform_job" for s in spans))
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.http_server import BackgroundHTTPServer, JSONHandler, Recorder, wait_until

TRACE_ENDPOINTS = ("v0.4/traces", "v0.5/traces")
INFO = {
    "version": "7.99.0-fake",
    "endpoints": ["/v0.4/traces", "/v0.5/traces", "/info"],
    "client_drop_p0s": False,
    "span_meta_structs": False,
    "config": {"statsd_port": 0, "receiver_port": 0},
}


@dataclass(frozen=True)
class Span:
    """One decoded span. ``trace_id`` is the full 128-bit id when the tracer sent its high half."""

    trace_id: int
    span_id: int
    parent_id: int
    name: str
    resource: str
    service: str
    type: str
    error: int
    start: int
    duration: int
    meta: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def trace_id_low(self) -> int:
        """The lower 64 bits, as the v0.4/v0.5 payloads carry it and as logs show it without 128-bit logging."""
        return self.trace_id & 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes


class FakeDatadogAgent(BackgroundHTTPServer):
    """Start with ``with FakeDatadogAgent() as agent`` (or :meth:`start`/:meth:`stop`); ``agent.url`` is its address."""

    def __init__(self) -> None:
        # One entry per request with the spans decoded from it, so a request and its spans appear together.
        self._received: Recorder[tuple[Request, list[Span]]] = Recorder()
        super().__init__(_handler_for(self), name="fake-dd-agent")

    @property
    def url(self) -> str:
        return self.base_url

    def spans(self) -> list[Span]:
        return [span for _, spans in self._received.items() for span in spans]

    def requests(self) -> list[Request]:
        return [request for request, _ in self._received.items()]

    def trace(self, trace_id: int) -> list[Span]:
        """The spans of one trace, matched on the lower 64 bits (both halves agree when both are known)."""
        low = trace_id & 0xFFFFFFFFFFFFFFFF
        return [s for s in self.spans() if s.trace_id_low == low]

    def wait_for(self, predicate: Callable[[list[Span]], bool], timeout: float = 20.0) -> list[Span]:
        """Poll until ``predicate(spans)`` holds; raise with what arrived when it does not in time."""
        def describe(spans: list[Span]) -> str:
            return f"{len(spans)}: {sorted({f'{s.service}:{s.name}' for s in spans})}"

        return wait_until(self.spans, predicate, timeout, "spans", describe)

    def _record(self, request: Request, spans: list[Span]) -> None:
        self._received.add((request, list(spans)))


def _handler_for(agent: FakeDatadogAgent) -> type[BaseHTTPRequestHandler]:
    class Handler(JSONHandler):
        def _read_body(self) -> bytes:
            body = super()._read_body()
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            return body

        def _handle(self) -> None:
            # ddtrace asks for "info" without a leading slash when the agent URL has no path.
            path = self.path.split("?", 1)[0].lstrip("/")
            body = self._read_body()
            spans: list[Span] = []
            if path in TRACE_ENDPOINTS:
                try:
                    spans = decode_traces(path.split("/")[0], body)
                except (ValueError, IndexError, KeyError, struct.error) as exc:
                    agent._record(Request(self.command, path, body), [])
                    self._answer(400, {"error": f"undecodable payload: {exc}"})
                    return
                agent._record(Request(self.command, path, body), spans)
                self._answer(200, {"rate_by_service": {}})
                return
            agent._record(Request(self.command, path, body), [])
            self._answer(200, INFO if path == "info" else {})

        do_GET = do_PUT = do_POST = _handle

    return Handler


def decode_traces(version: str, body: bytes) -> list[Span]:
    """Decode a ``v0.4`` (list of traces of span maps) or ``v0.5`` (string table + span arrays) payload."""
    payload = unpackb(body)
    if version == "v0.4":
        chunks = [[_span_v04(span) for span in trace] for trace in payload]
    elif version == "v0.5":
        strings, traces = payload
        chunks = [[_span_v05(strings, span) for span in trace] for trace in traces]
    else:
        raise ValueError(f"unknown trace API version {version}")
    return [span for chunk in chunks for span in _with_full_trace_ids(chunk)]


def _with_full_trace_ids(chunk: list[Span]) -> list[Span]:
    # The upper 64 bits of a 128-bit trace id travel once per chunk, as the hex tag _dd.p.tid of one span.
    high = next((s.meta["_dd.p.tid"] for s in chunk if s.meta.get("_dd.p.tid")), None)
    if high is None:
        return chunk
    return [replace(s, trace_id=(int(high, 16) << 64) | s.trace_id_low) for s in chunk]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _span_v04(raw: dict[Any, Any]) -> Span:
    item = {_text(k): v for k, v in raw.items()}
    meta = {_text(k): _text(v) for k, v in (item.get("meta") or {}).items()}
    metrics = {_text(k): float(v) for k, v in (item.get("metrics") or {}).items()}
    return Span(
        trace_id=int(item["trace_id"]), span_id=int(item["span_id"]),
        parent_id=int(item.get("parent_id") or 0), name=_text(item.get("name")),
        resource=_text(item.get("resource")), service=_text(item.get("service")), type=_text(item.get("type")),
        error=int(item.get("error") or 0), start=int(item.get("start") or 0),
        duration=int(item.get("duration") or 0), meta=meta, metrics=metrics,
    )


def _span_v05(strings: list[Any], raw: list[Any]) -> Span:
    def s(index: int) -> str:
        return _text(strings[index])

    service, name, resource, trace_id, span_id, parent_id, start, duration, error, meta, metrics, kind = raw[:12]
    meta_text = {s(k): s(v) for k, v in meta.items()}
    return Span(
        trace_id=int(trace_id), span_id=int(span_id), parent_id=int(parent_id),
        name=s(name), resource=s(resource), service=s(service), type=s(kind), error=int(error),
        start=int(start), duration=int(duration), meta=meta_text,
        metrics={s(k): float(v) for k, v in metrics.items()},
    )


def unpackb(data: bytes) -> Any:
    """Decode one MessagePack value (the full format: nil, bool, ints, floats, str, bin, array, map, ext)."""
    value, end = _unpack(memoryview(data), 0)
    if end != len(data):
        raise ValueError(f"{len(data) - end} trailing bytes after the MessagePack value")
    return value


_FIXED = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q",
          0xCA: ">f", 0xCB: ">d"}
_LENGTH = {0xC4: ">B", 0xC5: ">H", 0xC6: ">I", 0xD9: ">B", 0xDA: ">H", 0xDB: ">I", 0xDC: ">H", 0xDD: ">I",
           0xDE: ">H", 0xDF: ">I", 0xC7: ">B", 0xC8: ">H", 0xC9: ">I"}
_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}


def _unpack(buf: memoryview, pos: int) -> tuple[Any, int]:
    tag = buf[pos]
    pos += 1
    if tag <= 0x7F:
        return tag, pos
    if tag >= 0xE0:
        return tag - 0x100, pos
    if 0x80 <= tag <= 0x8F:
        return _unpack_map(buf, pos, tag & 0x0F)
    if 0x90 <= tag <= 0x9F:
        return _unpack_array(buf, pos, tag & 0x0F)
    if 0xA0 <= tag <= 0xBF:
        size = tag & 0x1F
        return bytes(buf[pos:pos + size]).decode("utf-8", "replace"), pos + size
    if tag == 0xC0:
        return None, pos
    if tag in (0xC2, 0xC3):
        return tag == 0xC3, pos
    if tag in _FIXED:
        fmt = _FIXED[tag]
        return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
    if tag in _FIXEXT:
        size = _FIXEXT[tag]
        return (buf[pos], bytes(buf[pos + 1:pos + 1 + size])), pos + 1 + size
    if tag in _LENGTH:
        fmt = _LENGTH[tag]
        size = struct.unpack_from(fmt, buf, pos)[0]
        pos += struct.calcsize(fmt)
        if tag in (0xC4, 0xC5, 0xC6):
            return bytes(buf[pos:pos + size]), pos + size
        if tag in (0xD9, 0xDA, 0xDB):
            return bytes(buf[pos:pos + size]).decode("utf-8", "replace"), pos + size
        if tag in (0xDC, 0xDD):
            return _unpack_array(buf, pos, size)
        if tag in (0xDE, 0xDF):
            return _unpack_map(buf, pos, size)
        return (buf[pos], bytes(buf[pos + 1:pos + 1 + size])), pos + 1 + size
    raise ValueError(f"unknown MessagePack type byte 0x{tag:02x} at {pos - 1}")


def _unpack_array(buf: memoryview, pos: int, size: int) -> tuple[list[Any], int]:
    items = []
    for _ in range(size):
        item, pos = _unpack(buf, pos)
        items.append(item)
    return items, pos


def _unpack_map(buf: memoryview, pos: int, size: int) -> tuple[dict[Any, Any], int]:
    result = {}
    for _ in range(size):
        key, pos = _unpack(buf, pos)
        value, pos = _unpack(buf, pos)
        result[key] = value
    return result, pos
