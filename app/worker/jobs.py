"""RQ entry points. ``process_generation`` runs in the work-horse process, one generation per job."""

from __future__ import annotations

import asyncio

import psycopg
from rq import get_current_job

from app import API_PREFIX
from app.connections import async_redis_client, pg_connect_async
from app.observability import tracing
from app.observability.logging import clear_context, get_logger
from app.observability.worker_metrics import flush_operation_stats
from app.providers.factory import build_provider
from app.settings import Settings
from app.storage.factory import build_storage
from app.worker.limiter import ProviderSlots, retry_slot_limit
from app.worker.pipeline import GenerationPipeline

log = get_logger("Worker")

SLOT_REDIS_TIMEOUT_SECONDS = 5.0

# Set by the worker process before it forks work-horses, so each job skips re-reading the environment.
_settings: Settings | None = None


def use_settings(settings: Settings) -> None:
    global _settings
    _settings = settings


def process_generation(generation_id: str, attempt: int) -> str | None:
    settings = _settings or Settings.from_env()
    try:
        return asyncio.run(run_generation(settings, generation_id, attempt))
    finally:
        clear_context()
        job = get_current_job()
        if job is not None:
            try:
                flush_operation_stats(job.connection)
            except Exception as exc:  # timings are best effort; the outcome is already recorded
                log.warning("Could not flush operation timings", error=str(exc))


async def run_generation(settings: Settings, generation_id: str, attempt: int) -> str | None:
    # Provider-slot leases: a silent Redis fails a command in seconds, and ProviderSlots retries it.
    redis = async_redis_client(settings.redis_url, socket_timeout=SLOT_REDIS_TIMEOUT_SECONDS,
                               sentinel=settings.redis_sentinel)
    provider = tracing.traced_provider(build_provider(settings, redis))
    storage = tracing.traced_storage(build_storage(settings, api_url_prefix=f"{API_PREFIX}/images"))
    slots = ProviderSlots(redis, settings.provider_concurrency,
                          retry_limit=retry_slot_limit(settings.provider_concurrency, settings.retry_slot_share))
    try:
        try:
            async with await pg_connect_async(settings.database_url) as conn:
                pipeline = GenerationPipeline(settings, conn, provider, storage, slots)
                return await pipeline.run(generation_id, attempt)
        except psycopg.OperationalError as exc:  # DatabaseSilentError among them
            # The database went silent or away: the attempt is abandoned, not failed. Its lease lapses and
            # the reaper re-queues the generation; ending the job normally keeps this attempt out of RQ's
            # failed registry (what a generation's outcome is, the database says).
            log.error("Database unavailable; attempt abandoned", generationId=generation_id, attempt=attempt,
                      error=f"{type(exc).__name__}: {exc}")
            return None
    finally:
        await provider.aclose()
        await storage.aclose()
        await redis.aclose()
