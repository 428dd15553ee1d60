"""A fake Black Forest Labs FLUX API: a real HTTP server on 127.0.0.1 with injectable faults.

It answers what :class:`app.providers.flux.FluxProvider` uses:

- ``POST /v1/{model}`` (header ``x-key`` must equal ``api_key``, else 403) with JSON ``{prompt,
  control_image (base64 PNG), width, height, seed, output_format}``; answers ``{id, polling_url}``.
  The task becomes ready ``latency`` seconds after its submission.
- ``GET /v1/get_result?id=...`` (``x-key`` required): ``{id, status, result}``; ``Pending`` until the task
  is ready, then ``Ready`` with ``result.sample`` = ``{base}/samples/{id}.png`` (or the task's injected
  terminal status); an unknown id answers ``Task not found``.
- ``GET /samples/{id}.png``: a small real PNG, no key (like BFL's signed delivery URLs).

Fault kinds: ``status_429`` (with ``Retry-After``), ``status_500``, ``hang`` (hold the request
``hang_seconds`` or until the server stops, then close without an answer), ``garbage`` (a non-JSON 200),
``moderated`` and ``error`` (the task ends ``Content Moderated`` / ``Error`` instead of ``Ready``).
They are chosen two ways:

- a prompt marker ``[fault:KIND]`` or ``[fault:KIND@STAGE]`` (stage ``submit``, the default, ``poll`` or
  ``sample``) applies to every request of that prompt's task at that stage;
- :meth:`FakeFlux.fail_next` ``(kind, n, stage)`` faults the next ``n`` requests at that stage
  (``moderated``/``error``: the next ``n`` accepted tasks).

Webhooks: a submission naming ``webhook_url`` (and ``webhook_secret``) gets, when its task ends, a POST of
``{task_id, status, result}`` to that URL, signed as :mod:`app.providers.flux_webhooks` describes
(``X-Webhook-Timestamp``, ``X-Webhook-Signature: sha256=HMAC(secret, "<ts>." + body)``). Webhook fault kinds
(a prompt marker ``[webhook:KIND]`` or :meth:`FakeFlux.webhook_next` ``(kind, n)``): ``drop`` (never sent),
``delay`` (sent ``webhook_delay`` seconds late), ``duplicate`` (sent twice), ``forge`` (a delivery claiming
Ready signed with a wrong secret is sent at submission, before the genuine one).

With ``cap`` set, a submission while ``cap`` tasks are in flight (submitted, not yet ready) answers 429.
Another process (a worker) steers the fake with ``POST /_control`` and a JSON body::

    {"action": "fail_next", "kind": "status_500", "n": 2, "stage": "poll"}
    {"action": "configure", "latency": 2.0, "cap": 24, "retry_after": 1, "hang_seconds": 30}
    {"action": "webhook_next", "kind": "drop", "n": 1}
    {"action": "reset"}          # forget queued faults
    {"action": "reset_stats"}    # zero the counters; tasks in flight stay in flight

``GET /_control`` answers the configuration and queued faults; ``GET /_stats`` (and :meth:`FakeFlux.stats`,
and attributes of the same names) answers ``submissions, accepted, rate_limited, polls, downloads,
auth_failures, faults_injected, in_flight, peak_in_flight, webhooks_sent, webhooks_accepted, webhooks_refused,
webhooks_dropped``; :meth:`FakeFlux.deliveries` lists each webhook sent with the HTTP status it got.
Run alone: ``python -m tests.fakes.flux_server --port 8787 --latency 2 --cap 24``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import heapq
import hmac
import io
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import httpx
from PIL import Image

from tests.fakes.http_server import BackgroundHTTPServer, JSONHandler, run_until_interrupted

FAULT_KINDS = ("status_429", "status_500", "hang", "garbage", "moderated", "error")
STAGES = ("submit", "poll", "sample")
TERMINAL_FAULTS = {"moderated": "Content Moderated", "error": "Error"}
WEBHOOK_FAULTS = ("drop", "delay", "duplicate", "forge")
STAT_FIELDS = ("submissions", "accepted", "rate_limited", "polls", "downloads", "auth_failures",
               "faults_injected", "in_flight", "peak_in_flight", "webhooks_sent", "webhooks_accepted",
               "webhooks_refused", "webhooks_dropped")
_MARKER = re.compile(r"\[fault:(?P<kind>[a-z_0-9]+)(?:@(?P<stage>[a-z]+))?\]")
_WEBHOOK_MARKER = re.compile(r"\[webhook:(?P<kind>[a-z]+)\]")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Task:
    """One accepted submission as the fake saw it (the control image is kept only as a check)."""

    id: str
    model: str
    prompt: str
    width: int
    height: int
    seed: int
    output_format: str
    control_image_is_png: bool
    ready_at: float
    outcome: str = "Ready"
    stage_faults: dict[str, str] = field(default_factory=dict)
    webhook_url: str | None = None
    webhook_secret: str = ""
    webhook_fault: str | None = None
    polls: int = 0
    downloaded_at: float | None = None  # monotonic time of the first sample download


@dataclass(frozen=True)
class Delivery:
    """One webhook POST the fake made, and the HTTP status it got (0: no answer)."""

    task_id: str
    forged: bool
    status_code: int
    late_seconds: float  # from the task's end (or the forgery's due time) to the answer


def _sample_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (40, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


class _Server(ThreadingHTTPServer):
    # Handler threads are joined on close; open keep-alive sockets are shut so those joins end at once.
    daemon_threads = False
    block_on_close = True
    request_queue_size = 256  # a burst of concurrent clients must not overflow the listen backlog

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.connections_lock:
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # clients hang up on purpose (timeouts); nothing to report


class FakeFlux(BackgroundHTTPServer):
    """Start with ``with FakeFlux(latency=0.5, cap=24) as flux`` (or :meth:`start`/:meth:`stop`)."""

    def __init__(
        self, latency: float = 0.0, cap: int | None = None, *, api_key: str = "fake-flux-key",
        port: int = 0, retry_after: float = 1.0, hang_seconds: float = 30.0, webhook_delay: float = 1.0,
    ) -> None:
        self.latency = latency
        self.cap = cap
        self.api_key = api_key
        self.retry_after = retry_after
        self.hang_seconds = hang_seconds
        self.webhook_delay = webhook_delay
        self.relative_polling_urls = False  # answer "/v1/get_result?id=..." instead of an absolute URL
        self.sample_png = _sample_png()
        self.submissions = self.accepted = self.rate_limited = self.polls = self.downloads = 0
        self.auth_failures = self.faults_injected = self.peak_in_flight = 0
        self.webhooks_sent = self.webhooks_accepted = self.webhooks_refused = self.webhooks_dropped = 0
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._queued_webhook_faults: deque[str] = deque()
        # Webhooks due, by monotonic time: (due, sequence, task, forged); one thread sends them in order.
        self._due: list[tuple[float, int, Task, bool]] = []
        self._due_changed = threading.Condition(self._lock)
        self._sequence = 0
        self._sender = threading.Thread(target=self._send_webhooks, name="fake-flux-webhooks", daemon=True)
        self._tasks: dict[str, Task] = {}
        self._queued: dict[str, deque[str]] = {stage: deque() for stage in STAGES}
        self._queued_outcomes: deque[str] = deque()
        self._stopping = threading.Event()
        # A short poll interval so stop() returns at once instead of up to half a second later.
        super().__init__(self._handler_class(), name="fake-flux", port=port, poll_interval=0.05, server_class=_Server)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        """The request handler; a subclass of the fake (tests/fakes/hostile_flux.py) extends it."""
        return _handler_for(self)

    def polling_url(self, task_id: str) -> str:
        """What a submission answers as the task's ``polling_url``."""
        path = f"/v1/get_result?id={task_id}"
        return path if self.relative_polling_urls else self.base_url + path

    def sample_url(self, task_id: str) -> str:
        """The task's ``result.sample`` in polls and webhooks."""
        return f"{self.base_url}/samples/{task_id}.png"

    def start(self) -> FakeFlux:
        self._sender.start()
        return cast(FakeFlux, super().start())

    def stop(self) -> None:
        server = cast(_Server, self._server)
        self._stopping.set()  # wakes held ("hang") requests
        with self._due_changed:
            self._due_changed.notify_all()
        server.shutdown()
        server.drop_connections()
        server.server_close()
        self._thread.join()

    # Faults and configuration -------------------------------------------------------------------

    def fail_next(self, kind: str, n: int = 1, stage: str = "submit") -> None:
        """Fault the next ``n`` requests at ``stage``; ``moderated``/``error``: the next ``n`` tasks."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
        with self._lock:
            if kind in TERMINAL_FAULTS:
                self._queued_outcomes.extend([TERMINAL_FAULTS[kind]] * n)
            else:
                self._queued[stage].extend([kind] * n)

    def webhook_next(self, kind: str, n: int = 1) -> None:
        """Apply webhook fault ``kind`` (drop, delay, duplicate, forge) to the next ``n`` accepted tasks."""
        if kind not in WEBHOOK_FAULTS:
            raise ValueError(f"unknown webhook fault {kind!r}; use one of {', '.join(WEBHOOK_FAULTS)}")
        with self._lock:
            self._queued_webhook_faults.extend([kind] * n)

    def reset(self) -> None:
        """Forget queued faults; tasks and counters stay."""
        with self._lock:
            for queue in self._queued.values():
                queue.clear()
            self._queued_outcomes.clear()
            self._queued_webhook_faults.clear()

    def reset_stats(self) -> None:
        with self._lock:
            self.submissions = self.accepted = self.rate_limited = self.polls = self.downloads = 0
            self.auth_failures = self.faults_injected = 0
            self.webhooks_sent = self.webhooks_accepted = self.webhooks_refused = self.webhooks_dropped = 0
            self._deliveries.clear()
            self.peak_in_flight = self._in_flight_locked()

    def control(self, command: dict[str, Any]) -> None:
        """Apply one ``/_control`` command; ``ValueError`` when it is malformed."""
        action = command.get("action")
        if action == "fail_next":
            kind, stage = str(command.get("kind")), str(command.get("stage", "submit"))
            self.fail_next(kind, int(command.get("n", 1)), stage)
        elif action == "configure":
            if "latency" in command:
                self.latency = float(command["latency"])
            if "cap" in command:
                self.cap = None if command["cap"] is None else int(command["cap"])
            if "retry_after" in command:
                self.retry_after = float(command["retry_after"])
            if "hang_seconds" in command:
                self.hang_seconds = float(command["hang_seconds"])
            if "webhook_delay" in command:
                self.webhook_delay = float(command["webhook_delay"])
        elif action == "webhook_next":
            self.webhook_next(str(command.get("kind")), int(command.get("n", 1)))
        elif action == "reset":
            self.reset()
        elif action == "reset_stats":
            self.reset_stats()
        else:
            raise ValueError(f"unknown action {action!r}; use fail_next, webhook_next, configure, reset or reset_stats")

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "latency": self.latency, "cap": self.cap, "retry_after": self.retry_after,
                "hang_seconds": self.hang_seconds, "webhook_delay": self.webhook_delay,
                "queued": {stage: list(queue) for stage, queue in self._queued.items()},
                "queued_outcomes": list(self._queued_outcomes),
                "queued_webhook_faults": list(self._queued_webhook_faults),
            }

    # What was received --------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight_locked()

    def stats(self) -> dict[str, int]:
        with self._lock:
            values = {name: getattr(self, name) for name in STAT_FIELDS if name != "in_flight"}
            return {**values, "in_flight": self._in_flight_locked()}

    def tasks(self) -> list[Task]:
        with self._lock:
            return list(self._tasks.values())

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    # Webhook delivery ---------------------------------------------------------------------------

    def _schedule_webhooks_locked(self, task: Task) -> None:
        if task.webhook_url is None:
            return
        if task.webhook_fault is None and self._queued_webhook_faults:
            task.webhook_fault = self._queued_webhook_faults.popleft()
        fault = task.webhook_fault
        due: list[tuple[float, bool]] = []
        if fault == "drop":
            self.webhooks_dropped += 1
        elif fault == "delay":
            due.append((task.ready_at + self.webhook_delay, False))
        elif fault == "duplicate":
            due += [(task.ready_at, False), (task.ready_at + 0.05, False)]
        elif fault == "forge":
            due += [(time.monotonic(), True), (task.ready_at, False)]
        else:
            due.append((task.ready_at, False))
        for when, forged in due:
            self._sequence += 1
            heapq.heappush(self._due, (when, self._sequence, task, forged))
        self._due_changed.notify_all()

    def _send_webhooks(self) -> None:
        # Deliveries due together go out together, as FLUX's would, not one after another.
        with httpx.Client(timeout=10) as client, ThreadPoolExecutor(16, "fake-flux-webhook") as senders:
            while not self._stopping.is_set():
                with self._due_changed:
                    if not self._due:
                        self._due_changed.wait(0.5)
                        continue
                    wait = self._due[0][0] - time.monotonic()
                    if wait > 0:
                        self._due_changed.wait(wait)
                        continue
                    due, _, task, forged = heapq.heappop(self._due)
                senders.submit(self._deliver, client, task, forged, due)

    def _deliver(self, client: httpx.Client, task: Task, forged: bool, due: float) -> None:
        status = "Ready" if forged else task.outcome
        result = ({"sample": self.sample_url(task.id), "prompt": task.prompt, "seed": task.seed}
                  if status == "Ready" else None)
        body = json.dumps({"task_id": task.id, "status": status, "result": result}).encode()
        timestamp = str(int(time.time()))
        secret = "not-the-secret" if forged else task.webhook_secret
        digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers = {"content-type": "application/json", "x-webhook-timestamp": timestamp,
                   "x-webhook-signature": f"sha256={digest}"}
        assert task.webhook_url is not None
        try:
            code = client.post(task.webhook_url, content=body, headers=headers).status_code
        except httpx.HTTPError:
            code = 0
        with self._lock:
            self.webhooks_sent += 1
            if 200 <= code < 300:
                self.webhooks_accepted += 1
            else:
                self.webhooks_refused += 1
            self._deliveries.append(Delivery(task.id, forged, code, time.monotonic() - due))

    # Used by the request handler ----------------------------------------------------------------

    def _in_flight_locked(self) -> int:
        now = time.monotonic()
        return sum(1 for task in self._tasks.values() if task.ready_at > now)

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _fault_for(self, stage: str, task: Task | None) -> str | None:
        with self._lock:
            fault = self._queued[stage].popleft() if self._queued[stage] else None
        if fault is None and task is not None:
            fault = task.stage_faults.get(stage)
        if fault is not None:
            self._count("faults_injected")
        return fault

    def _admit(self, task: Task) -> bool:
        """Keep the task unless ``cap`` tasks are already in flight."""
        with self._lock:
            in_flight = self._in_flight_locked()
            if self.cap is not None and in_flight >= self.cap:
                return False
            if task.outcome == "Ready" and self._queued_outcomes:
                task.outcome = self._queued_outcomes.popleft()
            self._tasks[task.id] = task
            self.accepted += 1
            self._schedule_webhooks_locked(task)
            self.peak_in_flight = max(self.peak_in_flight, in_flight + 1)
            return True

    def _task(self, task_id: str) -> Task | None:
        with self._lock:
            return self._tasks.get(task_id)


def _marker_faults(prompt: str) -> dict[str, str]:
    faults: dict[str, str] = {}
    for match in _MARKER.finditer(prompt):
        kind, stage = match["kind"], match["stage"] or "submit"
        if kind in FAULT_KINDS and stage in STAGES and kind not in TERMINAL_FAULTS:
            faults[stage] = kind
    return faults


def _marker_webhook_fault(prompt: str) -> str | None:
    for match in _WEBHOOK_MARKER.finditer(prompt):
        if match["kind"] in WEBHOOK_FAULTS:
            return match["kind"]
    return None


def _marker_outcome(prompt: str) -> str:
    for match in _MARKER.finditer(prompt):
        if match["kind"] in TERMINAL_FAULTS:
            return TERMINAL_FAULTS[match["kind"]]
    return "Ready"


def _handler_for(fake: FakeFlux) -> type[BaseHTTPRequestHandler]:
    class Handler(JSONHandler):
        def _rate_limited(self) -> None:
            fake._count("rate_limited")
            headers = {"Retry-After": f"{fake.retry_after:g}"}
            self._answer(429, {"detail": "Too many active tasks; retry later"}, headers)

        def _apply(self, fault: str | None) -> bool:
            """Answer with the injected HTTP fault, if any; ``True`` when the request is done."""
            if fault is None:
                return False
            if fault == "status_429":
                self._rate_limited()
            elif fault == "status_500":
                self._answer(500, {"detail": "Internal Server Error (injected)"})
            elif fault == "garbage":
                self._send(200, b"<html>upstream proxy says hello</html>", "text/html")
            elif fault == "hang":
                fake._stopping.wait(fake.hang_seconds)
                self.close_connection = True
            return True

        def _authorized(self) -> bool:
            if self.headers.get("x-key") == fake.api_key:
                return True
            fake._count("auth_failures")
            self._answer(403, {"detail": "Not authenticated - Invalid Authentication"})
            return False

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/_stats":
                self._answer(200, fake.stats())
            elif url.path == "/_control":
                self._answer(200, fake.state())
            elif url.path == "/v1/get_result":
                self._poll(parse_qs(url.query).get("id", [""])[0])
            elif url.path.startswith("/samples/") and url.path.endswith(".png"):
                self._sample(url.path[len("/samples/"):-len(".png")])
            else:
                self._answer(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            body = self._read_body()
            if path == "/_control":
                self._control(body, fake)
            elif path.startswith("/v1/") and path.count("/") == 2:
                self._submit(path[len("/v1/"):], body)
            else:
                self._answer(404, {"detail": "Not Found"})

        def _submit(self, model: str, body: bytes) -> None:
            if not self._authorized():
                return
            fake._count("submissions")
            try:
                payload = json.loads(body)
                prompt = payload["prompt"]
                control = base64.b64decode(payload["control_image"], validate=True)
                task = Task(
                    id=str(uuid.uuid4()), model=model, prompt=str(prompt), width=int(payload["width"]),
                    height=int(payload["height"]), seed=int(payload["seed"]),
                    output_format=str(payload.get("output_format", "jpeg")),
                    control_image_is_png=control.startswith(_PNG_SIGNATURE),
                    ready_at=time.monotonic() + fake.latency, outcome=_marker_outcome(str(prompt)),
                    stage_faults=_marker_faults(str(prompt)),
                    webhook_url=str(payload["webhook_url"]) if payload.get("webhook_url") else None,
                    webhook_secret=str(payload.get("webhook_secret") or ""),
                    webhook_fault=_marker_webhook_fault(str(prompt)),
                )
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                self._answer(422, {"detail": [{"msg": f"invalid request: {exc!r}"}]})
                return
            if self._apply(fake._fault_for("submit", task)):
                return
            if not fake._admit(task):
                self._rate_limited()
                return
            self._answer(200, {"id": task.id, "polling_url": fake.polling_url(task.id)})

        def _poll(self, task_id: str) -> None:
            if not self._authorized():
                return
            fake._count("polls")
            task = fake._task(task_id)
            if task is not None:
                with fake._lock:
                    task.polls += 1
            if self._apply(fake._fault_for("poll", task)):
                return
            if task is None:
                self._answer(200, {"id": task_id, "status": "Task not found"})
            elif time.monotonic() < task.ready_at:
                self._answer(200, {"id": task_id, "status": "Pending", "result": None, "progress": None})
            elif task.outcome != "Ready":
                self._answer(200, {"id": task_id, "status": task.outcome, "result": None,
                                 "details": {"reason": "injected by the fake"}})
            else:
                self._answer(200, {"id": task_id, "status": "Ready", "result": {
                    "sample": fake.sample_url(task_id), "prompt": task.prompt, "seed": task.seed}})

        def _sample(self, task_id: str) -> None:
            task = fake._task(task_id)
            if self._apply(fake._fault_for("sample", task)):
                return
            if task is None or task.outcome != "Ready" or time.monotonic() < task.ready_at:
                self._answer(404, {"detail": "Not Found"})
                return
            fake._count("downloads")
            with fake._lock:
                if task.downloaded_at is None:
                    task.downloaded_at = time.monotonic()
            self._send(200, fake.sample_png, "image/png")

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake FLUX API until interrupted.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds from submission to Ready")
    parser.add_argument("--cap", type=int, default=None, help="in-flight tasks before submissions get 429")
    parser.add_argument("--api-key", default="fake-flux-key")
    parser.add_argument("--retry-after", type=float, default=1.0)
    args = parser.parse_args()
    run_until_interrupted(FakeFlux(args.latency, args.cap, api_key=args.api_key, port=args.port,
                                   retry_after=args.retry_after))


if __name__ == "__main__":
    main()
