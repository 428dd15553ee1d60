"""Metrics every worker process adds to in Redis at the moment of the event, read by the exporter.

Work-horses are forked per job and exit after it, and workers come and go: a figure kept in any one
process's memory dies with it. These counters and histograms live in Redis hashes instead, one per
metric (``posegen:metrics:<name>``), incremented where the event happens (``HINCRBY`` in the round
trip the caller makes anyway, or one pipelined round trip of its own), so they are exact for the whole
fleet and survive any process exiting. The exporter reads them at scrape time
(:class:`FleetMetricsCollector`). Losing Redis loses them along with the queue itself; Prometheus reads
that as a counter reset.

Hash fields: a counter's field is its label value; a histogram's fields are ``le:<bound>`` (observations
in that bucket, not cumulative), ``sum`` (seconds), and ``exemplar:<bound>`` (JSON of the latest traced
observation in that bucket: ``{"trace_id", "generation_id", "value", "ts"}``).

Every label has a small closed set of values, each exported from the first scrape (as 0), so ``rate()``
sees the first event.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString
from redis import Redis

from app import metric_catalogue

KEY_PREFIX = "posegen:metrics:"


@dataclass(frozen=True)
class FleetCounter:
    """The counter ``metric`` of the catalogue (``…_total``, one label) with that label taking the values of
    ``values`` only."""

    metric: str
    values: tuple[str, ...]

    @property
    def name(self) -> str:
        """The family name (without ``_total``), which names its hash."""
        return metric_catalogue.spec(self.metric).family

    @property
    def label(self) -> str:
        (label,) = metric_catalogue.spec(self.metric).labels
        return label

    @property
    def key(self) -> str:
        return KEY_PREFIX + self.name

    def field(self, value: str) -> str:
        if value not in self.values:
            raise ValueError(f"{self.name}: {self.label}={value!r} is not one of {self.values}")
        return value


@dataclass(frozen=True)
class FleetHistogram:
    """The histogram ``name`` of the catalogue with fixed bucket bounds in seconds (``+Inf`` implied), no labels."""

    name: str
    buckets: tuple[float, ...]

    @property
    def key(self) -> str:
        return KEY_PREFIX + self.name

    def bucket_of(self, seconds: float) -> str:
        """The upper bound of the bucket ``seconds`` falls in (a bucket includes its bound), as text."""
        for bound in self.buckets:
            if seconds <= bound:
                return floatToGoString(bound)
        return "+Inf"

    def increments(self, seconds: float, exemplar: dict[str, str] | None = None) -> dict[str, Any]:
        """What one observation adds: ``{field: amount}`` (HINCRBYFLOAT) and, traced, the exemplar to SET."""
        bound = self.bucket_of(seconds)
        fields: dict[str, Any] = {f"le:{bound}": 1, "sum": seconds}
        if exemplar:
            fields[f"exemplar:{bound}"] = json.dumps({**exemplar, "value": seconds, "ts": time.time()})
        return fields


# The provider's slot limiter and calls (app/worker/limiter.py, app/providers/flux.py).
PROVIDER_SLOT_WAIT = FleetHistogram(
    "pose_provider_slot_wait_seconds", (0.005, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
PROVIDER_TASK = FleetHistogram("pose_provider_task_duration_seconds", (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300))
PROVIDER_RATE_LIMITED = FleetCounter("pose_provider_rate_limited_total", ("submit", "poll", "download"))
RETRY_REASONS = ("rate_limited", "server_error", "timeout", "network")
PROVIDER_RETRIES = FleetCounter("pose_provider_retries_total", RETRY_REASONS)
# RQ jobs (attempts of a generation) that ended failed, seen by the worker (app/worker/job_failures.py).
JOB_FAILURE_REASONS = ("work_horse_died", "timeout", "exception", "stopped", "refused")
JOB_FAILURES = FleetCounter("pose_job_failures_total", JOB_FAILURE_REASONS)

COUNTERS: tuple[FleetCounter, ...] = (PROVIDER_RATE_LIMITED, PROVIDER_RETRIES, JOB_FAILURES)
HISTOGRAMS: tuple[FleetHistogram, ...] = (PROVIDER_SLOT_WAIT, PROVIDER_TASK)


def add_observation(pipe: Any, histogram: FleetHistogram, seconds: float,
                    exemplar: dict[str, str] | None = None) -> None:
    """Queue one observation on a Redis pipeline (sync or asyncio); the caller executes it."""
    for field, amount in histogram.increments(seconds, exemplar).items():
        if field.startswith("exemplar:"):
            pipe.hset(histogram.key, field, amount)
        else:
            pipe.hincrbyfloat(histogram.key, field, amount)


def add_count(pipe: Any, counter: FleetCounter, value: str, amount: int = 1) -> Any:
    """Add ``amount`` events of ``counter{label=value}`` on a Redis pipeline or client (await it when asyncio)."""
    return pipe.hincrby(counter.key, counter.field(value), amount)


class FleetMetricsCollector(Collector):
    """The fleet's counters and histograms from Redis, in one pipelined round trip."""

    def __init__(self, redis: Redis, counters: Sequence[FleetCounter] = COUNTERS,
                 histograms: Sequence[FleetHistogram] = HISTOGRAMS) -> None:
        self._redis = redis
        self._counters = tuple(counters)
        self._histograms = tuple(histograms)

    def collect(self) -> Iterator[Metric]:
        with self._redis.pipeline(transaction=False) as pipe:
            metrics: tuple[FleetCounter | FleetHistogram, ...] = (*self._counters, *self._histograms)
            for metric in metrics:
                pipe.hgetall(metric.key)
            replies = pipe.execute()
        decoded = [{k.decode(): v.decode() for k, v in reply.items()} for reply in replies]
        for counter, raw in zip(self._counters, decoded, strict=False):
            family = metric_catalogue.counter_family(counter.metric)
            for value in counter.values:
                family.add_metric([value], float(raw.get(value, 0)))
            yield family
        for histogram, raw in zip(self._histograms, decoded[len(self._counters):], strict=True):
            yield histogram_family(histogram.name, histogram.buckets, raw)


def histogram_family(name: str, buckets: Sequence[float], raw: dict[str, str]) -> Metric:
    """The catalogue's histogram ``name`` from per-bucket counts ``le:<bound>``, ``sum`` and ``exemplar:<bound>``
    fields."""
    family = metric_catalogue.histogram_family(name)
    cumulative = 0.0
    samples: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
    for bound in [*buckets, math.inf]:
        le = floatToGoString(bound)
        cumulative += float(raw.get(f"le:{le}", 0))
        exemplar = _exemplar(raw.get(f"exemplar:{le}"))
        samples.append((le, cumulative) if exemplar is None else (le, cumulative, exemplar))
    family.add_metric([], samples, float(raw.get("sum", 0)))
    return family


def _exemplar(raw: str | None) -> Exemplar | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
        labels = {"trace_id": str(data["trace_id"])}
        if data.get("generation_id"):
            labels["generation_id"] = str(data["generation_id"])
        return Exemplar(labels, float(data["value"]), float(data["ts"]))
    except (ValueError, KeyError, TypeError):
        return None
