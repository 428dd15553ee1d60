"""Performance tracker, after the seed's ``performanceTracker``: ``start``/``end`` and ``measure``.

Every measurement is logged (component Metrics, DEBUG) and observed in the
``pose_operation_duration_seconds{operation}`` histogram of this process.
``measure`` works as a context manager (``with`` and ``async with``) and as a
decorator of plain and ``async`` functions.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import Histogram

from app.metric_catalogue import histogram
from app.observability.logging import get_logger

# Operations measured across the service; names are label values of the histogram. The image provider's
# call is one operation whichever provider (local, flux) makes it; its log entries name the provider.
PROVIDER_CALL = "provider_call"
IMAGE_UPLOAD = "image_upload"
POSE_TOTAL = "pose_total"
QUEUE_WAIT = "queue_wait"
CONTROLNET_RENDER = "controlnet_render"

# The operations of a generation job, which a worker's /metrics shows at 0 before the first job.
JOB_OPERATIONS = (CONTROLNET_RENDER, PROVIDER_CALL, IMAGE_UPLOAD, POSE_TOTAL, QUEUE_WAIT)
OPERATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

OPERATION_SECONDS = histogram("pose_operation_duration_seconds", buckets=OPERATION_BUCKETS)

F = TypeVar("F", bound=Callable[..., Any])


class PerformanceTracker:
    def __init__(self, histogram: Histogram = OPERATION_SECONDS) -> None:
        self._histogram = histogram
        self._started: dict[str, tuple[float, str]] = {}
        self._log = get_logger("Metrics")

    def start(self, key: str, operation: str | None = None) -> None:
        """Start timing ``key``; ``operation`` (default: the key) is the histogram label."""
        self._started[key] = (time.perf_counter(), operation or key)

    def end(self, key: str, **metadata: Any) -> float:
        """Stop timing ``key``; returns the duration in milliseconds (0 when never started)."""
        started = self._started.pop(key, None)
        if started is None:
            self._log.warning("Performance timer ended without start", key=key)
            return 0.0
        began, operation = started
        return self.record(operation, (time.perf_counter() - began) * 1000.0, **metadata)

    def record(self, operation: str, duration_ms: float, **metadata: Any) -> float:
        self._histogram.labels(operation).observe(duration_ms / 1000.0)
        self._log.debug(
            "Performance measured", operation=operation, duration=round(duration_ms, 3), **metadata
        )
        return duration_ms

    def measure(self, operation: str, **metadata: Any) -> Measurement:
        return Measurement(self, operation, metadata)


class Measurement:
    """One timing: a context manager (sync or async) or a decorator."""

    def __init__(self, tracker: PerformanceTracker, operation: str, metadata: dict[str, Any]) -> None:
        self._tracker = tracker
        self.operation = operation
        self._metadata = metadata
        self._began = 0.0
        self.duration_ms = 0.0

    def __enter__(self) -> Measurement:
        self._began = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = (time.perf_counter() - self._began) * 1000.0
        self.duration_ms = self._tracker.record(self.operation, elapsed, **self._metadata)

    async def __aenter__(self) -> Measurement:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    def __call__(self, func: F) -> F:
        tracker, operation, metadata = self._tracker, self.operation, self._metadata
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with Measurement(tracker, operation, metadata):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with Measurement(tracker, operation, metadata):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


performance_tracker = PerformanceTracker()
