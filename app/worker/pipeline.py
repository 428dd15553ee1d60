"""One generation, run by one job: its poses concurrently, each rendered, generated, stored, recorded.

Per pose: render the ControlNet skeleton, wait for a shared provider slot, call
the provider, upload, and record the outcome with its timings. Failures are
classified into one seed error type; the failed pose is refunded by
:func:`app.domain.processing.record_pose_failure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection

from app.db.connect import bounded
from app.domain.processing import (
    ClaimedGeneration,
    PendingPose,
    PoseTimings,
    claim_generation,
    extend_lease,
    finish_generation,
    pose_deadline_seconds,
    record_pose_failure,
    record_pose_success,
)
from app.errors import ErrorType, ProviderTimeoutError, classify
from app.observability import error_reports, tracing
from app.observability.logging import bind_context, get_logger
from app.observability.performance import (
    CONTROLNET_RENDER,
    IMAGE_UPLOAD,
    POSE_TOTAL,
    PROVIDER_CALL,
    QUEUE_WAIT,
    performance_tracker,
)
from app.providers.base import ImageProvider, ImageRequest
from app.providers.skeleton import render_pose_skeleton
from app.settings import Settings
from app.storage.base import ImageStorage
from app.upstream import excerpt
from app.worker.faults import FaultPlan, raise_if_due
from app.worker.limiter import ProviderSlots
from app.worker.stages import PipelineStage

log = get_logger("Worker")

# Every statement of a job ends within this (including the wait for the job's one connection): a
# database that stops answering without closing the connection then fails the attempt in bounded time
# (psycopg cancels the statement and closes the connection), and the reaper re-queues it once its lease
# lapses, instead of the work-horse waiting until the job timeout.
DB_STEP_SECONDS = 10.0
# The most of a failure's message recorded with the pose (the column keeps 2,000 characters).
RECORDED_MESSAGE_CHARS = 2000


class GenerationPipeline:
    def __init__(
        self,
        settings: Settings,
        conn: AsyncConnection,
        provider: ImageProvider,
        storage: ImageStorage,
        slots: ProviderSlots,
    ) -> None:
        self._settings = settings
        self._conn = conn
        self._provider = provider
        self._storage = storage
        self._slots = slots
        self._faults = FaultPlan(settings.faults)
        # One connection per job: writes from concurrent poses take turns.
        self._db = asyncio.Lock()
        self._pose_gate = asyncio.Semaphore(settings.pose_concurrency)

    async def run(self, generation_id: str, attempt: int) -> str | None:
        """Process the generation; returns its final status, or None when it was not ours to run."""
        async with self._database():
            claimed = await claim_generation(self._conn, generation_id, attempt, self._settings.lease_seconds)
        if claimed is None:
            log.warning("Generation not claimable; skipping job", generationId=generation_id, attempt=attempt)
            return None
        bind_context(generationId=generation_id)
        error_reports.tag_generation_job(claimed.generation_id, claimed.user_id)
        with tracing.generation_span(claimed.generation_id, claimed.user_id, claimed.attempt, len(claimed.poses),
                                     claimed.trace_context):
            return await self._process(claimed)

    async def _process(self, claimed: ClaimedGeneration) -> str | None:
        generation_id, attempt = claimed.generation_id, claimed.attempt
        queue_wait_ms = (datetime.now(UTC) - claimed.created_at).total_seconds() * 1000
        performance_tracker.record(QUEUE_WAIT, queue_wait_ms, generationId=generation_id)
        log.info("Processing generation job", generationId=generation_id, poseCount=len(claimed.poses),
                 attempt=attempt, userId=claimed.user_id)
        heartbeat = asyncio.create_task(self._heartbeat(claimed))
        poses = asyncio.gather(*(
            tracing.trace_pose(self._run_pose(claimed, pose), generation_id, pose.pose_id, pose.position)
            for pose in claimed.poses
        ))
        try:
            running: set[asyncio.Future[Any]] = {heartbeat, poses}
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            if heartbeat.done() and heartbeat.exception() is not None:
                poses.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await poses
                raise heartbeat.exception()  # type: ignore[misc]
            await poses
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await heartbeat
        async with self._database():
            finished = await finish_generation(self._conn, generation_id, attempt)
        if finished is None:
            log.warning("Generation ownership lost before finishing", generationId=generation_id)
            return None
        status, duration_ms, error_type = finished
        level = log.info if status == "completed" else log.error
        level("Generation finished", generationId=generation_id, status=status, duration=duration_ms,
              errorType=error_type)
        if status == "failed":
            error_reports.capture_generation_failure(
                generation_id, claimed.user_id, attempt, len(claimed.poses), error_type
            )
        return status

    async def _heartbeat(self, claimed: ClaimedGeneration) -> None:
        interval = self._settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            async with self._database():
                ours = await extend_lease(
                    self._conn, claimed.generation_id, claimed.attempt, self._settings.lease_seconds
                )
            if not ours:
                log.warning("Lease lost", generationId=claimed.generation_id)
                return

    async def _run_pose(self, claimed: ClaimedGeneration, pose: PendingPose) -> None:
        async with self._pose_gate:
            began = time.perf_counter()
            queue_wait_ms = int((datetime.now(UTC) - claimed.created_at).total_seconds() * 1000)
            stages: dict[PipelineStage, int] = {}
            fault = self._faults.pick(claimed.generation_id, pose.position, claimed.attempt)
            meta = {"generationId": claimed.generation_id, "poseId": pose.pose_id}
            try:
                async with asyncio.timeout(self._pose_deadline()):
                    image_key = await self._generate_and_store(claimed, pose, fault, stages, meta)
            except Exception as exc:  # every failure becomes a recorded, refunded outcome
                error_type = _classify_timeout(exc)
                timings = self._timings(queue_wait_ms, stages, began)
                # Every message is recordable: PostgreSQL refuses NUL (the attempt would fail and be re-queued).
                message = excerpt(str(exc), RECORDED_MESSAGE_CHARS) or type(exc).__name__
                async with self._database():
                    recorded = await record_pose_failure(
                        self._conn, claimed, pose, error_type, message, timings
                    )
                log.error("Pose generation failed", exc_info=exc, errorType=error_type.value,
                          refunded=recorded, duration=timings.duration_ms, **meta)
                error_reports.capture_pose_failure(
                    exc, claimed.generation_id, claimed.user_id, pose.pose_id, error_type
                )
                return
            timings = self._timings(queue_wait_ms, stages, began)
            async with self._database():
                recorded = await record_pose_success(self._conn, claimed, pose, image_key, timings)
            if not recorded:
                # Fenced: the reaper re-queued the generation under a later attempt (this one lost its lease, e.g.
                # cut off from the database), or the pose has an outcome already. Nothing was written; the
                # image stays an orphan under this attempt's key, and the pose counts in no timing.
                log.warning("Pose result refused: the attempt no longer owns the generation",
                            attempt=claimed.attempt, imageKey=image_key, **meta)
                return
            performance_tracker.record(POSE_TOTAL, timings.duration_ms or 0, **meta)
            log.info("Generated pose successfully", duration=timings.duration_ms, **meta)

    async def _generate_and_store(
        self,
        claimed: ClaimedGeneration,
        pose: PendingPose,
        fault: ErrorType | None,
        stages: dict[PipelineStage, int],
        meta: dict[str, str],
    ) -> str:
        size = self._settings.image_size
        async with performance_tracker.measure(CONTROLNET_RENDER, **meta) as step:
            raise_if_due(fault, PipelineStage.CONTROLNET)
            control = await asyncio.to_thread(render_pose_skeleton, pose.keypoints, size)
        stages[PipelineStage.CONTROLNET] = int(step.duration_ms)
        request = ImageRequest(
            prompt=claimed.prompt, control_image=control, width=size, height=size,
            seed=_seed(claimed.generation_id, pose.position), generation_id=claimed.generation_id,
            pose_id=pose.pose_id,
        )
        async with self._slots.slot(retry=claimed.is_retry) as held:
            async with performance_tracker.measure(PROVIDER_CALL, provider=self._provider.name, **meta) as step:
                raise_if_due(fault, PipelineStage.PROVIDER)
                # The slot counts the provider's tasks in flight: a finished task's download does not hold it.
                image = await self._provider.generate(request, task_done=held.release)
        stages[PipelineStage.PROVIDER] = int(step.duration_ms)
        # The attempt is part of the key: a fenced attempt that uploads late (its lease lapsed while it was cut
        # off, and a later attempt delivered the pose) must not overwrite the image the database points to.
        key = f"{claimed.generation_id}/{pose.position}-{pose.pose_id}-a{claimed.attempt}.png"
        async with performance_tracker.measure(IMAGE_UPLOAD, **meta) as step:
            raise_if_due(fault, PipelineStage.UPLOAD)
            await self._storage.put(key, image, "image/png")
        stages[PipelineStage.UPLOAD] = int(step.duration_ms)
        return key

    @contextlib.asynccontextmanager
    async def _database(self) -> AsyncIterator[None]:
        """The job's connection, for one step bounded by DB_STEP_SECONDS; raises DatabaseSilentError."""
        async with bounded(DB_STEP_SECONDS), self._db:
            yield

    def _pose_deadline(self) -> float:
        # The provider enforces its own deadline; this bounds everything else around it.
        return pose_deadline_seconds(self._settings.flux_deadline_seconds)

    @staticmethod
    def _timings(queue_wait_ms: int, stages: dict[PipelineStage, int], began: float) -> PoseTimings:
        return PoseTimings(
            queue_wait_ms=queue_wait_ms,
            controlnet_ms=stages.get(PipelineStage.CONTROLNET),
            provider_ms=stages.get(PipelineStage.PROVIDER),
            upload_ms=stages.get(PipelineStage.UPLOAD),
            duration_ms=int((time.perf_counter() - began) * 1000),
        )


def _classify_timeout(exc: BaseException) -> ErrorType:
    if isinstance(exc, TimeoutError) and not isinstance(exc, ProviderTimeoutError):
        return ErrorType.TIMEOUT_ERROR
    return classify(exc)


def _seed(generation_id: str, position: int) -> int:
    return zlib.crc32(f"{generation_id}:{position}".encode())
