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
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.http_server import BackgroundHTTPServer, JSONHandler, Recorder, wait_until


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


class WebhookSink(BackgroundHTTPServer):
    """Start with ``with WebhookSink() as sink``; every POST with a JSON body is kept, answered 200."""

    def __init__(self) -> None:
        self._notifications: Recorder[Notification] = Recorder()
        super().__init__(_handler_for(self), name="webhook-sink")

    def url(self, path: str = "/") -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def notifications(self) -> list[Notification]:
        return self._notifications.items()

    def wait_for(
        self, predicate: Callable[[list[Notification]], bool], timeout: float = 30.0
    ) -> list[Notification]:
        """Poll until ``predicate`` holds for what arrived so far; fail with a summary of it otherwise."""
        def describe(found: list[Notification]) -> Any:
            return [(n.path, n.receiver, [a.get("labels", {}).get("alertname") for a in n.alerts()]) for n in found]

        return wait_until(self.notifications, predicate, timeout, "expected webhook notifications", describe)


def _handler_for(sink: WebhookSink) -> type[BaseHTTPRequestHandler]:
    class Handler(JSONHandler):
        def do_POST(self) -> None:
            raw = self._read_body()
            try:
                body = json.loads(raw)
            except ValueError as exc:
                self._answer(400, {"detail": f"not JSON: {exc}"})
                return
            sink._notifications.add(Notification(self.path, body, time.time()))
            self._answer(200, {"status": "ok"})

    return Handler
