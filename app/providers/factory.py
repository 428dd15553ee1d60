"""Choose the image provider named by ``POSEGEN_PROVIDER``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.providers.base import ImageProvider
from app.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis


def build_provider(settings: Settings, redis: Redis | None = None) -> ImageProvider:
    """The configured provider; with ``redis``, FLUX polls around the shared estimate of task durations
    (or, with ``FLUX_WEBHOOKS=true``, waits for its webhooks) and both report their calls to the fleet's
    metrics."""
    from app.providers.call_metrics import ProviderCallMetrics

    call_metrics = ProviderCallMetrics(redis) if redis is not None else None
    if settings.provider == "flux":
        # Imported here so the offline default never loads the HTTP client module.
        from app.providers.flux import FluxProvider
        from app.providers.flux_webhooks import TaskWakeups
        from app.providers.task_durations import TaskDurations

        durations = TaskDurations(redis, settings.flux_model) if redis is not None else None
        wakeups = TaskWakeups.for_settings(settings) if redis is not None and settings.flux_webhooks else None
        return FluxProvider(settings, durations=durations, call_metrics=call_metrics, wakeups=wakeups)
    from app.providers.local import LocalProvider

    return LocalProvider(settings.local_latency, call_metrics=call_metrics)
