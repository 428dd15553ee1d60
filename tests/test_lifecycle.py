"""Stopping without losing work: the API's shutdown delay and drain on SIGTERM (a rolling update behind a Service),
and the worker's job timeout never shorter than the longest attempt the settings allow."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from app import API_PREFIX
from app.domain.processing import generation_time_limit_seconds
from app.queue import JOB_TIMEOUT_SECONDS
from app.settings import Settings
from app.worker.loop import PoseWorker
from tests.fakes.tcp_proxy import TcpProxy
from tests.stack import running_stack

DELAY_SECONDS = 5.0
# Requests started this long before the delay ends must succeed; later ones race the socket's closing.
MARGIN_SECONDS = 1.5
POSES = ["pose_standing_confident", "pose_arms_crossed"]


class _Prober(threading.Thread):
    """GETs ``path`` on a new connection each time (no keep-alive), recording (start, status or error, JSON body,
    end)."""

    def __init__(self, base_url: str, path: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{base_url}{API_PREFIX}{path}"
        self.results: list[tuple[float, int | str, dict[str, Any], float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                answer = httpx.get(self.url, timeout=10, headers={"Connection": "close"})
                body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") \
                    else {}
                self.results.append((started, answer.status_code, body, time.monotonic()))
            except httpx.HTTPError as exc:
                self.results.append((started, type(exc).__name__, {}, time.monotonic()))
            time.sleep(0.02)


def _slow_create(port: int, token: str) -> tuple[socket.socket, bytes]:
    """A POST /generations whose head and first body bytes are sent now; returns the socket and the rest of
    the body, for the caller to send later: a request in flight across the shutdown."""
    body = b'{"poseIds": ["pose_standing_confident"], "prompt": "in flight across a shutdown"}'
    head = (f"POST {API_PREFIX}/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(head + body[:10])
    return sock, body[10:]


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_sigterm_keeps_serving_through_the_delay_then_drains_in_flight_requests_and_exits_0(
        template_db: str, tmp_path: Path) -> None:
    """kubernetes#86280: endpoints are removed after SIGTERM. During POSEGEN_SHUTDOWN_DELAY_SECONDS every new
    connection is served, readiness answers 503 (shuttingDown), responses close their connection; then the
    listening socket closes, a request in flight still gets its answer, and the process exits 0."""
    with running_stack(template_db, tmp_path, workers=0,
                       POSEGEN_SHUTDOWN_DELAY_SECONDS=str(DELAY_SECONDS)) as stack:
        assert stack.api is not None
        user = stack.new_user(credits=1000)
        assert stack.http.get("/health").status_code == 200
        live, ready = _Prober(stack.base_url, "/health/live"), _Prober(stack.base_url, "/health")
        live.start()
        ready.start()
        in_flight, rest = _slow_create(stack.port, stack.token(user))
        kept_alive = httpx.Client(base_url=f"{stack.base_url}{API_PREFIX}", timeout=10)
        assert kept_alive.get("/health/live").headers.get("connection") != "close"
        # Both probers have been answered (ready) before the signal: a loaded machine may take a while.
        deadline = time.monotonic() + 30
        while not (any(r[1] == 200 for r in ready.results) and any(r[1] == 200 for r in live.results)):
            assert time.monotonic() < deadline, (ready.results, live.results)
            time.sleep(0.05)

        sigterm = time.monotonic()
        stack.api.popen.send_signal(signal.SIGTERM)
        # The kept-alive connection is told to close once the process has seen the signal.
        deadline = time.monotonic() + DELAY_SECONDS - MARGIN_SECONDS
        while kept_alive.get("/health/live").headers.get("connection") != "close":
            assert time.monotonic() < deadline, "no Connection: close during the delay"
            time.sleep(0.05)
        # Wait for the listening socket to close (a new connection refused), then finish the in-flight request.
        deadline = sigterm + DELAY_SECONDS + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", stack.port), timeout=2).close()
            except OSError:
                break
            assert time.monotonic() < deadline, "still accepting connections long after the delay"
            time.sleep(0.05)
        closed = time.monotonic()
        in_flight.sendall(rest)
        answer = _read_response(in_flight)
        in_flight.close()
        exit_code = stack.api.popen.wait(timeout=30)
        live.stop.set()
        ready.stop.set()
        live.join(15)
        ready.join(15)

        assert answer.startswith(b"HTTP/1.1 202"), answer[:500]  # accepted and charged
        assert exit_code == 0, stack.api.output()
        assert closed - sigterm >= DELAY_SECONDS - 0.5, f"stopped accepting {closed - sigterm:.2f} s after SIGTERM"
        # Within the delay (less a margin for the signal's delivery), not one new connection failed.
        served_until = sigterm + DELAY_SECONDS - MARGIN_SECONDS
        window = [(t - sigterm, r) for t, r, _, _ in live.results if sigterm <= t < served_until]
        assert len(window) >= 3 and all(r == 200 for _, r in window), window
        before = [(r, body) for _, r, body, finished in ready.results if finished < sigterm]
        during = [(t - sigterm, r, body) for t, r, body, _ in ready.results
                  if sigterm + 1.0 <= t < sigterm + DELAY_SECONDS - MARGIN_SECONDS]
        # Before SIGTERM: ready (a check timing out on a loaded machine may make one probe 503, never "stopping").
        assert any(r == 200 for r, _ in before) and not any("shuttingDown" in body for _, body in before), before
        assert len(during) >= 2 and all(r == 503 and body.get("shuttingDown") is True for _, r, body in during), \
            during
        # The request in flight was served: its generation exists, charged.
        with stack.db() as conn:
            (count,) = conn.execute("SELECT count(*) FROM generations WHERE prompt = %s",
                                    ("in flight across a shutdown",)).fetchone()
        assert count == 1


def test_a_second_sigterm_ends_the_delay_and_without_a_delay_sigterm_exits_0_at_once(
        template_db: str, tmp_path: Path) -> None:
    for delay, signals in (("60", 2), ("0", 1)):
        with running_stack(template_db, tmp_path / f"d{delay}", workers=0,
                           POSEGEN_SHUTDOWN_DELAY_SECONDS=delay) as stack:
            assert stack.api is not None
            started = time.monotonic()
            for _ in range(signals):
                stack.api.popen.send_signal(signal.SIGTERM)
                time.sleep(0.5)
            assert stack.api.popen.wait(timeout=20) == 0, stack.api.output()
            assert time.monotonic() - started < 20


def test_the_worker_never_times_an_attempt_out_before_the_settings_allow_it_to_end() -> None:
    """RQ kills a work-horse at its job's timeout, also during a warm shutdown; the job's 3600 s must not cut
    an attempt the settings allow to run longer (10 poses one at a time: 10 x (300 + 60) + 60 = 3660 s)."""
    serial = Settings.from_env({"POSEGEN_POSE_CONCURRENCY": "1"})
    limit = generation_time_limit_seconds(serial.flux_deadline_seconds, serial.max_poses_per_generation,
                                          serial.pose_concurrency)
    assert limit == 3660 > JOB_TIMEOUT_SECONDS
    worker = PoseWorker.__new__(PoseWorker)
    worker.attempt_limit_seconds = limit
    assert worker.job_timeout_for(JOB_TIMEOUT_SECONDS) >= limit
    assert worker.job_timeout_for(7200) == 7200 and worker.job_timeout_for(None) is None
    defaults = Settings()
    worker.attempt_limit_seconds = generation_time_limit_seconds(
        defaults.flux_deadline_seconds, defaults.max_poses_per_generation, defaults.pose_concurrency)
    assert worker.job_timeout_for(JOB_TIMEOUT_SECONDS) == JOB_TIMEOUT_SECONDS


def test_the_workers_liveness_endpoint_answers_while_redis_is_silent(template_db: str, tmp_path: Path) -> None:
    """The worker pod's liveness probe reads /metrics (timeoutSeconds 5 in deploy/k8s/worker.yaml): a Redis that
    goes silent (a partition that closes nothing) must not make it time out, or every worker pod is restarted,
    killing the generations they run. The endpoint reads its timing hashes from Redis with a short timeout."""
    with running_stack(template_db, tmp_path, workers=0, api=False) as stack:
        url = urlsplit(stack.redis_url)
        with TcpProxy((url.hostname or "127.0.0.1", url.port or 6379)) as proxy:
            worker = stack.start_worker(REDIS_URL=urlunsplit(url._replace(netloc=f"127.0.0.1:{proxy.port}")))
            stack.wait_workers_ready(1)
            metrics = f"http://127.0.0.1:{worker.metrics_port}/metrics"
            assert httpx.get(metrics, timeout=5).status_code == 200
            proxy.silence(new_connections=True)
            for _ in range(3):  # existing connections and new ones, all silent
                started = time.monotonic()
                answer = httpx.get(metrics, timeout=10)
                assert answer.status_code == 200 and "pose_build_info" in answer.text
                assert time.monotonic() - started < 4, f"{time.monotonic() - started:.1f} s"
            worker.stop()
