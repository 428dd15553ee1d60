"""``posegen canary``: a synthetic user that runs a one-pose generation through the public API on a schedule.

At zero user traffic the volume-guarded alerts (HighFailureRate needs 10 finished generations an hour) cannot
fire; the canary's runs are traffic of known outcome. Each run, as a client would:

1. ``POST /generations`` of one pose (:data:`CANARY_POSE`) as the user :data:`CANARY_USER` (a USER token it
   mints from ``JWT_SECRET``, as ``posegen token`` does). A 402 is topped up first: ``POST /credits/grants`` of
   exactly the missing credits, with an ADMIN token whose subject is :data:`CANARY_USER` too, so every canary
   grant is a ``grant`` ledger row of user ``posegen-canary`` ``created_by`` ``posegen-canary`` (the ledger's
   invariant balance = grants - charges + refunds holds as for anyone), then the create is sent once more.
2. ``GET /generations/{id}`` every :data:`POLL_SECONDS` until ``completed`` or ``failed``.

A run succeeds when the generation completed with its pose completed. It fails, with one JSON log entry naming
its ``reason``, when the API cannot be reached (``api_unreachable``), answers anything else than expected
(``api_error``, with the status), the generation failed (``generation_failed``, with its ``errorType``), or it is
not terminal within ``POSEGEN_CANARY_TIMEOUT_SECONDS`` (``not_terminal``: queue stuck or no worker).

Schedule: a run every ``POSEGEN_CANARY_INTERVAL_SECONDS`` from the start of the previous one; after a failed run
the next comes :data:`CONFIRM_SECONDS` later at most, so two failures in a row (CanaryFailing's condition, which
one blip cannot meet: ``pose_canary_consecutive_failures >= 2``) are seen within minutes of an outage even with a
long interval.

Metrics on ``/metrics`` (``POSEGEN_CANARY_METRICS_PORT``), scraped as job ``posegen-canary``: the ``pose_canary_*``
entries of :mod:`app.metric_catalogue` and ``pose_build_info``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app import API_PREFIX
from app.api.auth import Role, mint_token
from app.metric_catalogue import counter, gauge, gauge_family, histogram
from app.observability.build_info import BuildInfoCollector
from app.observability.logging import get_logger
from app.settings import Settings

CANARY_USER = "posegen-canary"
CANARY_POSE = "pose_standing_confident"
CANARY_PROMPT = "posegen canary: synthetic check of the generation path"
# How often a run polls its generation, and how soon a failed run is confirmed by the next one.
POLL_SECONDS = 1.0
CONFIRM_SECONDS = 60.0
# Each HTTP request's own bound; the run's bound is POSEGEN_CANARY_TIMEOUT_SECONDS.
REQUEST_TIMEOUT_SECONDS = 10.0
REASONS = ("api_unreachable", "api_error", "generation_failed", "not_terminal")
DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

log = get_logger("Canary")


@dataclass(frozen=True)
class RunResult:
    """One run's outcome: ``success`` or ``failure``; ``reason`` one of :data:`REASONS` for a failure; ``detail``
    what the API said; ``duration_seconds`` from the create to the end of the run."""

    outcome: str
    reason: str | None
    generation_id: str | None
    duration_seconds: float
    detail: str = ""


class _LastSuccess(Collector):
    """``pose_canary_last_success_timestamp_seconds``, absent until the first success (a 0 would read as a
    success at the epoch, i.e. ancient, while the first run is still under way)."""

    def __init__(self) -> None:
        self.value: float | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.value is not None:
            yield gauge_family("pose_canary_last_success_timestamp_seconds", self.value)


class CanaryMetrics:
    """The canary's registry (see the module's table)."""

    def __init__(self, revision: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs = counter("pose_canary_runs_total", registry=self.registry)
        self.failures = counter("pose_canary_failures_total", registry=self.registry)
        self.duration = histogram("pose_canary_run_duration_seconds", buckets=DURATION_BUCKETS, registry=self.registry)
        self.consecutive_failures = gauge("pose_canary_consecutive_failures", registry=self.registry)
        self.last_success = _LastSuccess()
        self.registry.register(self.last_success)
        self.registry.register(BuildInfoCollector(revision))
        for outcome in ("success", "failure"):
            self.runs.labels(outcome)  # 0 from the first scrape: increase() sees the first failure
        for reason in REASONS:
            self.failures.labels(reason)

    def record(self, result: RunResult) -> None:
        self.runs.labels(result.outcome).inc()
        self.duration.labels(result.outcome).observe(result.duration_seconds)
        if result.outcome == "success":
            self.last_success.value = time.time()
            self.consecutive_failures.set(0)
        else:
            self.consecutive_failures.inc()
            if result.reason:
                self.failures.labels(result.reason).inc()


class _Stopped(Exception):
    """Asked to stop during a run: neither a success nor a failure, so it is not counted."""


class _Failed(Exception):
    def __init__(self, reason: str, detail: str, generation_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.generation_id = generation_id


class Canary:
    """Runs against the API at ``settings.ops_api_url`` (``POSEGEN_API_URL``) with tokens from ``JWT_SECRET``."""

    def __init__(self, settings: Settings, metrics: CanaryMetrics, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.http = httpx.Client(base_url=f"{settings.ops_api_url.rstrip('/')}{API_PREFIX}",
                                 timeout=REQUEST_TIMEOUT_SECONDS)

    def _headers(self, role: Role) -> dict[str, str]:
        ttl = min(3600, self.settings.token_max_ttl_seconds)
        return {"Authorization": f"Bearer {mint_token(self.settings.jwt_secret, CANARY_USER, role, ttl)}"}

    def _request(self, method: str, path: str, role: Role = Role.USER, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, headers=self._headers(role), **kwargs)
        except httpx.HTTPError as exc:
            raise _Failed("api_unreachable", f"{method} {path}: {type(exc).__name__}: {exc}") from None

    def _create(self) -> httpx.Response:
        return self._request("POST", "/generations", json={"poseIds": [CANARY_POSE], "prompt": CANARY_PROMPT})

    def _top_up(self, problem: dict[str, Any]) -> int:
        """Grant exactly the credits a 402 says are missing; returns the amount."""
        missing = int(problem.get("required", 0)) - int(problem.get("balance", 0))
        if missing <= 0:
            raise _Failed("api_error", f"402 without a shortfall: {problem}")
        answer = self._request("POST", "/credits/grants", Role.ADMIN, json={"userId": CANARY_USER, "amount": missing})
        if answer.status_code != 201:
            raise _Failed("api_error", f"POST /credits/grants answered {answer.status_code}: {answer.text[:300]}")
        log.info("Canary credits topped up", userId=CANARY_USER, amount=missing)
        return missing

    def _run(self, started: float) -> str:
        answer = self._create()
        if answer.status_code == 402:
            self._top_up(answer.json())
            answer = self._create()
        if answer.status_code != 202:
            raise _Failed("api_error", f"POST /generations answered {answer.status_code}: {answer.text[:300]}")
        generation_id = str(answer.json()["generationId"])
        deadline = started + self.settings.canary_timeout_seconds
        body: dict[str, Any] = {}
        while True:
            answer = self._request("GET", f"/generations/{generation_id}")
            if answer.status_code != 200:
                raise _Failed("api_error", f"GET /generations/{generation_id} answered {answer.status_code}: "
                                           f"{answer.text[:300]}", generation_id)
            body = answer.json()
            if body["status"] == "completed" and all(p["status"] == "completed" for p in body["poses"]):
                return generation_id
            if body["status"] in ("completed", "failed"):
                raise _Failed("generation_failed", f"generation {body['status']}, errorType {body.get('errorType')}: "
                                                   f"{body.get('errorMessage') or ''}".strip(), generation_id)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timeout = self.settings.canary_timeout_seconds
                raise _Failed("not_terminal", f"still {body['status']} after {timeout:g} s", generation_id)
            if self.stop.wait(min(POLL_SECONDS, remaining)):
                raise _Stopped

    def run_once(self) -> RunResult | None:
        """One run, recorded in the metrics and logged (a failure as a WARN entry with its reason); None when
        ``stop`` was set during the run (not counted)."""
        started = time.monotonic()
        try:
            generation_id = self._run(started)
        except _Stopped:
            log.info("Canary stopped during a run (not counted)")
            return None
        except _Failed as failed:
            result = RunResult("failure", failed.reason, failed.generation_id, time.monotonic() - started,
                               failed.detail)
            log.warning("Canary run failed", reason=failed.reason, detail=failed.detail,
                        generationId=failed.generation_id, durationSeconds=round(result.duration_seconds, 3))
        except (ValueError, KeyError, TypeError) as exc:  # an answer not shaped as the API documents
            result = RunResult("failure", "api_error", None, time.monotonic() - started, f"unexpected answer: {exc}")
            log.warning("Canary run failed", reason="api_error", detail=result.detail,
                        durationSeconds=round(result.duration_seconds, 3))
        else:
            result = RunResult("success", None, generation_id, time.monotonic() - started)
            log.info("Canary run succeeded", generationId=generation_id,
                     durationSeconds=round(result.duration_seconds, 3))
        self.metrics.record(result)
        return result

    def run_forever(self) -> None:
        """Runs until ``stop`` is set: every interval from the previous start, :data:`CONFIRM_SECONDS` at most
        after a failure."""
        while not self.stop.is_set():
            started = time.monotonic()
            result = self.run_once()
            pause = self.settings.canary_interval_seconds
            if result is not None and result.outcome == "failure":
                pause = min(pause, CONFIRM_SECONDS)
            self.stop.wait(max(0.0, started + pause - time.monotonic()))

    def close(self) -> None:
        self.http.close()
