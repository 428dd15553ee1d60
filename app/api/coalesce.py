"""Coalescing concurrent requests into batches: one database round trip (and one commit) for many.

An item joins the next batch that has not started yet, never one already running, so a read in it
sees every write committed before it arrived. At most ``max_in_flight`` batches run at once; an item
that finds a free slot starts its batch at once (no added latency when idle), the others gather while
the running batches are out, up to ``max_batch`` per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Generic, TypeVar

from app.api.prometheus_metrics import BATCH_SIZE

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    kind = "batch"

    def __init__(self, *, max_in_flight: int, max_batch: int) -> None:
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch_size = BATCH_SIZE.labels(self.kind)

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._in_flight < self._max_in_flight:
            self._dispatch()
        # Each caller has a future of its own: a caller that goes away cancels only that, and the batch
        # runs on without it (a generation created for a caller gone before its enqueue is re-queued
        # by the workers' reaper).
        return await future

    async def _process(self, items: Sequence[Item]) -> Sequence[Result | BaseException]:
        """One result (or the exception for that item alone) per item, in order."""
        raise NotImplementedError

    def _dispatch(self) -> None:
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
        self._in_flight += 1
        self._batch_size.observe(len(batch))
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._process([item for item, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        except BaseException as exc:  # noqa: BLE001 - every waiter gets the failure (e.g. 503 when the DB is down)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            if self._pending and self._in_flight < self._max_in_flight:
                self._dispatch()

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
