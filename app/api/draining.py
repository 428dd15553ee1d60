"""The API's graceful stop behind a load balancer: on SIGTERM, keep serving for a while, then drain and exit.

Kubernetes sends SIGTERM when it removes a pod from a Service, but the endpoint removal reaches kube-proxy, the
ingress controller and cloud load balancers a moment later: a server that stops accepting at SIGTERM refuses
the connections they still send it (kubernetes#86280). With ``POSEGEN_SHUTDOWN_DELAY_SECONDS`` > 0,
:class:`DrainingServer` (uvicorn's server) answers SIGTERM with a *delay*: for that many seconds it keeps
accepting and serving, ``GET /health`` (readiness) answers 503 with ``shuttingDown: true``, and every response
carries ``Connection: close`` so clients move their next request to a fresh connection, which the updated
routing sends elsewhere. Then uvicorn's own graceful shutdown runs: the listening socket closes, in-flight
requests finish (up to ``timeout_graceful_shutdown``), the lifespan ends, and ``posegen api`` exits 0.

A second SIGTERM ends the delay early; SIGINT (Ctrl-C) stops at once, as it always did. The delay is what an
exec ``preStop: sleep`` would do, without needing a shell or ``sleep`` in the image or Kubernetes 1.30's
``preStop.sleep``; the pod's ``terminationGracePeriodSeconds`` must cover it plus the graceful shutdown.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any

import uvicorn

from app.observability.logging import get_logger

log = get_logger("API")

# Set (in this process) from SIGTERM on while a delay is configured; readiness reads it.
_draining = threading.Event()


def draining() -> bool:
    """Whether this API process got SIGTERM and is in its shutdown delay (or past it)."""
    return _draining.is_set()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a shutdown delay of ``delay_seconds`` after SIGTERM (see the module).

    SIGTERM is never re-raised after the shutdown (uvicorn re-raises the signals it caught, which for SIGTERM
    ends the process with -15): a stop on request exits 0."""

    def __init__(self, config: uvicorn.Config, delay_seconds: float) -> None:
        super().__init__(config)
        self.delay_seconds = delay_seconds
        self._drain_until: float | None = None
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM:
            super().handle_exit(sig, frame)
            return
        if self.delay_seconds > 0 and self._drain_until is None and not self.should_exit:
            # A signal handler: just note the deadline; on_tick (in the event loop) logs and acts on it.
            self._drain_until = time.monotonic() + self.delay_seconds
            _draining.set()
            return
        self.should_exit = True  # no delay, or a second SIGTERM: stop now (not captured: no re-raise)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and not self.should_exit:
            if not self._announced:
                self._announced = True
                log.info("SIGTERM: serving on, answering readiness 503, before the graceful shutdown",
                         shutdownDelaySeconds=self.delay_seconds)
            if time.monotonic() >= self._drain_until:
                log.info("Shutdown delay over: closing the listening socket, finishing in-flight requests")
                self.should_exit = True
        return await super().on_tick(counter)


def close_connections_while_draining(app: Any) -> Any:
    """``app`` (ASGI) with ``Connection: close`` on every response started during the shutdown delay, so that
    a client's kept-alive connection ends after its current request instead of being cut by the shutdown."""

    async def serve(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_closing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and _draining.is_set():
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await app(scope, receive, send_closing)

    return serve
