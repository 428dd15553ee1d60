"""Reads of single generations, coalesced: clients poll ``GET /generations/{id}`` far more often than
anything else, so concurrent reads share one ``WHERE id = ANY(...)`` query (see :mod:`app.api.coalesce`).

One batch runs at a time: under 32 concurrent pollers that served 10-15% more reads per second than
two (bench/api_throughput.py). Each generation in a batch is encoded to JSON once for every caller
that asked for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from psycopg_pool import AsyncConnectionPool

from app.api.coalesce import Coalescer
from app.api.schemas import GenerationView, PoseResult
from app.db.connect import API_DB_SECONDS, bounded
from app.domain.generations import get_generations
from app.timestamps import iso_or_none

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    user_id: str
    body: bytes  # the GenerationView, encoded
    etag: str  # a strong entity tag of body, quoted


class GenerationReader(Coalescer[str, "GenerationRecord | None"]):
    kind = "generation_read"

    def __init__(self, pool: AsyncConnectionPool, storage: Any, *, max_in_flight: int = 1,
                 max_batch: int = 256) -> None:
        super().__init__(max_in_flight=max_in_flight, max_batch=max_batch)
        self._pool = pool
        self._storage = storage

    async def get(self, generation_id: str) -> GenerationRecord | None:
        """The generation as the API shows it and its owner, or None when there is no such generation."""
        return await self.submit(generation_id)

    async def _process(self, items: Sequence[str]) -> Sequence[GenerationRecord | None]:
        async with bounded(API_DB_SECONDS), self._pool.connection() as conn:
            rows = await get_generations(conn, list(set(items)))
        found = {row["generationId"]: self._record(row) for row in rows}
        return [found.get(generation_id) for generation_id in items]

    def _record(self, row: dict[str, Any]) -> GenerationRecord:
        storage = self._storage
        view = GenerationView(
            generationId=row["generationId"], status=row["status"], prompt=row["prompt"],
            createdAt=iso_or_none(row["createdAt"]) or "", finishedAt=iso_or_none(row["finishedAt"]),
            durationMs=row["durationMs"], creditsCharged=row["creditsCharged"],
            creditsRefunded=row["creditsRefunded"], errorType=row["errorType"],
            poses=[
                PoseResult(
                    poseId=p["poseId"], status=p["status"], errorType=p["errorType"],
                    imageUrl=storage.public_url(p["imageKey"]) if p["imageKey"] else None,
                    durationMs=p["durationMs"], queueWaitMs=p["queueWaitMs"], providerMs=p["providerMs"],
                    uploadMs=p["uploadMs"],
                )
                for p in row["poses"]
            ],
        )
        body = _encode(view)
        return GenerationRecord(row["userId"], body, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"')
