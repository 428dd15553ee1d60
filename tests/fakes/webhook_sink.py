"""A webhook sink: a real HTTP server on 127.0.0.1 that keeps every JSON document POSTed to it.

Alertmanager's ``webhook_configs`` post one JSON notification per alert group (version 4 payload:
``receiver``, ``status``, ``groupLabels``, ``alerts`` ...). Point each receiver at its own path to
see which receiver delivered what. Usage::

    with WebhookSink() as sink:
        url = sink.url("/pager")
        ...
        notifications = sink.wait_for(lambda found: any(n.body["receiver"] == "pager" for n in found))
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Notification:
    path: str
    body: Any
    received_at: float

    @property
    def receiver(self) -> str:
        return str(self.body.get("receiver", "")) if isinstance(self.body, dict) else ""

    def alerts(self, status: str | None = None) -> list[dict[str, Any]]:
        """The alerts of the notification, optionally only those in ``status`` (``firing``/``resolved``)."""
        alerts = self.body.get("alerts", []) if isinstance(self.body, dict) else []
        return [alert for alert in alerts if status is None or alert.get("status") == status]


class WebhookSink:
    """Start with ``with WebhookSink() as sink``; every POST with a JSON body is kept, answered 200."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notifications: list[Notification] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-sink", daemon=True)

    def url(self, path: str = "/") -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/{path.lstrip('/')}"

    def start(self) -> WebhookSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def notifications(self) -> list[Notification]:
        with self._lock:
            return list(self._notifications)

    def wait_for(
        self, predicate: Callable[[list[Notification]], bool], timeout: float = 30.0
    ) -> list[Notification]:
        """Poll until ``predicate`` holds for what arrived so far; fail with a summary of it otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.notifications()
            if predicate(found):
                return found
            if time.monotonic() > deadline:
                summary = [(n.path, n.receiver, [a.get("labels", {}).get("alertname") for a in n.alerts()])
                           for n in found]
                raise AssertionError(f"expected webhook notifications did not arrive within {timeout} s; got {summary}")
            time.sleep(0.1)

    def _record(self, notification: Notification) -> None:
        with self._lock:
            self._notifications.append(notification)


def _handler_for(sink: WebhookSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError as exc:
                self._answer(400, {"detail": f"not JSON: {exc}"})
                return
            sink._record(Notification(self.path, body, time.time()))
            self._answer(200, {"status": "ok"})

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read what was stored
            return

    return Handler
