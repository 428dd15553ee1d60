"""A scrape target whose metrics a test sets: a real HTTP server on 127.0.0.1 serving ``/metrics``.

Gauges are set as they are (``target.set("pose_queue_depth", 600)``); counters advance at a rate per
second set by the test (``target.rate("pose_generations_total", 3, status="failed")``), integrated at each
scrape, so ``rate()`` over them is what was asked. Labels ``job``/``instance`` given to a series are kept
by a scrape job with ``honor_labels: true`` (several "processes" behind one target).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler

from tests.fakes.http_server import BackgroundHTTPServer, JSONHandler

Key = tuple[str, tuple[tuple[str, str], ...]]


class MetricsTarget(BackgroundHTTPServer):
    """Start with ``with MetricsTarget() as target``; Prometheus scrapes ``target.address``'s ``/metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gauges: dict[Key, float] = {}
        self._counters: dict[Key, float] = {}
        self._rates: dict[Key, float] = {}
        self._last = time.time()
        super().__init__(_handler_for(self), name="metrics-target")

    def set(self, name: str, value: float, **labels: str) -> None:
        """A gauge's value (kept until set again)."""
        with self._lock:
            self._gauges[(name, tuple(sorted(labels.items())))] = value

    def rate(self, name: str, per_second: float, **labels: str) -> None:
        """A counter's increase per second from now on (0 stops it; it never goes down)."""
        with self._lock:
            self._advance()
            key = (name, tuple(sorted(labels.items())))
            self._counters.setdefault(key, 0.0)
            self._rates[key] = per_second

    def _advance(self) -> None:
        now = time.time()
        for key, per_second in self._rates.items():
            self._counters[key] += per_second * (now - self._last)
        self._last = now

    def exposition(self) -> str:
        """The text format of every series now (untyped samples, as Prometheus reads them)."""
        with self._lock:
            self._advance()
            series = {**self._gauges, **self._counters}
        lines = []
        for (name, labels), value in sorted(series.items()):
            rendered = ",".join(f'{key}="{val}"' for key, val in labels)
            lines.append(f"{name}{{{rendered}}} {value!r}" if labels else f"{name} {value!r}")
        return "\n".join(lines) + "\n"


def _handler_for(target: MetricsTarget) -> type[BaseHTTPRequestHandler]:
    class Handler(JSONHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self._answer(404, {"detail": "only /metrics"})
                return
            self._send(200, target.exposition().encode(), "text/plain; version=0.0.4")

    return Handler
