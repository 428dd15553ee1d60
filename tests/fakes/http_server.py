"""Scaffolding shared by the fake HTTP services: a server in a background thread, a JSON handler, recording.

- :class:`BackgroundHTTPServer`: a ``ThreadingHTTPServer`` on ``127.0.0.1`` (port 0 unless told) served from
  a daemon thread, with ``start``/``stop``, use as a context manager and ``base_url``;
- :class:`JSONHandler`: a quiet HTTP/1.1 request handler with ``_send``/``_answer`` (JSON) and ``_read_body``;
- :class:`Recorder`: a lock-protected list of what a fake received;
- :func:`wait_until`: poll until a predicate holds, else fail with a summary of what arrived;
- :func:`run_until_interrupted`: serve from the command line until Ctrl-C.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Protocol, Self, TypeVar

T = TypeVar("T")
V = TypeVar("V")


class DaemonThreadingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True


class BackgroundHTTPServer:
    """Owns the server and the thread serving it; subclasses build their handler, then call ``__init__``."""

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], *, name: str, port: int = 0, poll_interval: float = 0.5,
        server_class: type[ThreadingHTTPServer] = DaemonThreadingHTTPServer,
    ) -> None:
        self._server = server_class(("127.0.0.1", port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": poll_interval}, name=name, daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def base_url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_until_interrupted(server: BackgroundHTTPServer) -> None:
    """Serve, printing the base URL, until Ctrl-C (``python -m tests.fakes.<fake>``)."""
    with server:
        print(server.base_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


class Recorder(Generic[T]):
    """A list appended to by handler threads and read (as a copy) by the test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[T] = []

    def add(self, item: T) -> None:
        with self._lock:
            self._items.append(item)

    def items(self) -> list[T]:
        with self._lock:
            return list(self._items)


def wait_until(
    read: Callable[[], V], predicate: Callable[[V], bool], timeout: float, what: str, describe: Callable[[V], Any]
) -> V:
    """Poll ``read()`` until ``predicate`` holds for it; else ``AssertionError`` naming ``what`` and ``describe``."""
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if predicate(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not arrive within {timeout} s; got {describe(found)}")
        time.sleep(0.1)


class Controllable(Protocol):
    def control(self, command: dict[str, Any]) -> None: ...

    def state(self) -> dict[str, Any]: ...


class JSONHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _control(self, body: bytes, fake: Controllable) -> None:
        """Apply a ``/_control`` JSON command; answer the fake's state, or 400 when the command is malformed."""
        try:
            command = json.loads(body or b"{}")
            if not isinstance(command, dict):
                raise ValueError("the body must be a JSON object")
            fake.control(command)
        except (ValueError, TypeError) as exc:
            self._answer(400, {"error": str(exc)})
            return
        self._answer(200, fake.state())

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read what the fake recorded
        return
