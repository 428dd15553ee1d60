"""Creates, coalesced: concurrent ``POST /generations`` share one transaction, so one commit (the WAL
flush every writer otherwise queues behind) serves a batch of them (see :mod:`app.api.coalesce` and
``app/db/functions/posegen_create_generations.sql``). Each create still succeeds or fails on its own.

Two batches run at once, at most 32 creates each (PostgreSQL keeps 64 subtransaction ids per backend
before every snapshot gets slower; each create is one subtransaction). Unshared (with APM on), every
create is a batch of its own, started at once from its request, so its SQL is in the request's trace.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from psycopg_pool import AsyncConnectionPool

from app.api.coalesce import Coalescer
from app.db.connect import API_DB_SECONDS, bounded
from app.domain.generations import CreatedGeneration, GenerationRequest, create_generations


class GenerationCreator(Coalescer[GenerationRequest, CreatedGeneration]):
    kind = "generation_create"

    def __init__(self, pool: AsyncConnectionPool, *, price_per_pose: int, queued_check_seconds: float,
                 shared: bool = True) -> None:
        # Unshared: never a waiting batch, so each starts in its request's context (the pool still bounds
        # how many run at once).
        super().__init__(max_in_flight=2 if shared else sys.maxsize, max_batch=32 if shared else 1)
        self._pool = pool
        self._price_per_pose = price_per_pose
        self._queued_check_seconds = queued_check_seconds

    async def create(self, request: GenerationRequest) -> CreatedGeneration:
        """The generation, or raises what failed this create (see :func:`create_generations`)."""
        return await self.submit(request)

    async def _process(self, items: Sequence[GenerationRequest]) -> Sequence[CreatedGeneration | BaseException]:
        async with bounded(API_DB_SECONDS), self._pool.connection() as conn:
            return await create_generations(conn, list(items), price_per_pose=self._price_per_pose,
                                            queued_check_seconds=self._queued_check_seconds)
