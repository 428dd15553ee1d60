"""Creates, coalesced: concurrent ``POST /generations`` share one transaction, so one commit (the WAL
flush every writer otherwise queues behind) serves a batch of them (see :mod:`app.api.coalesce` and
migration 006). Each create still succeeds or fails on its own.

Two batches run at once, at most 32 creates each (PostgreSQL keeps 64 subtransaction ids per backend
before every snapshot gets slower; each create is one subtransaction).
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg_pool import AsyncConnectionPool

from app.api.coalesce import Coalescer
from app.domain.generations import CreatedGeneration, GenerationRequest, create_generations


class GenerationCreator(Coalescer[GenerationRequest, CreatedGeneration]):
    kind = "generation_create"

    def __init__(self, pool: AsyncConnectionPool, *, price_per_pose: int, queued_check_seconds: float,
                 max_in_flight: int = 2, max_batch: int = 32) -> None:
        super().__init__(max_in_flight=max_in_flight, max_batch=max_batch)
        self._pool = pool
        self._price_per_pose = price_per_pose
        self._queued_check_seconds = queued_check_seconds

    async def create(self, request: GenerationRequest) -> CreatedGeneration:
        """As :func:`app.domain.generations.create_generation`: the generation, or the same exceptions."""
        return await self.submit(request)

    async def _process(self, items: Sequence[GenerationRequest]) -> Sequence[CreatedGeneration | BaseException]:
        async with self._pool.connection() as conn:
            return await create_generations(conn, list(items), price_per_pose=self._price_per_pose,
                                            queued_check_seconds=self._queued_check_seconds)
