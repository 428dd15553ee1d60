"""The API's enqueuer: generation jobs of concurrent requests put into Redis in one transaction per batch."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from concurrent.futures import InvalidStateError as FutureStateError
from queue import SimpleQueue

from rq import Queue

from app.observability.logging import get_logger
from app.queue import generation_job

log = get_logger("API")

ENQUEUE_WAIT_SECONDS = 15.0


class BatchEnqueuer:
    """Enqueues generation jobs from one thread, one Redis transaction for all jobs waiting at that moment.

    The Redis client is synchronous, so enqueues must stay off the API's event loop; one thread that
    drains whatever piled up while it was busy costs a third of the CPU of an enqueue per request on a
    thread pool, and keeps the pool's threads from competing with the event loop for the GIL. A request
    still waits for its own job to be in Redis before answering; when Redis refuses a batch, every request
    in it gets the error (and refunds its generation).
    """

    def __init__(self, queue: Queue, max_batch: int = 64) -> None:
        self._queue = queue
        self._max_batch = max_batch
        self._pending: SimpleQueue[tuple[str, int, Future[None]] | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="posegen-enqueuer", daemon=True)
        self._thread.start()

    async def enqueue(self, generation_id: str, attempt: int) -> None:
        future: Future[None] = Future()
        self._pending.put((generation_id, attempt, future))
        # A request cancelled while waiting still has its job enqueued: it was charged. The wait is
        # bounded (the Redis client's own timeouts end a batch well before) so no request hangs.
        await asyncio.wait_for(asyncio.wrap_future(future), ENQUEUE_WAIT_SECONDS)

    def close(self, timeout: float = 5.0) -> None:
        self._pending.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:  # a bug here must not leave requests waiting without a word
            log.exception("Enqueuer thread stopped")
            raise

    def _serve(self) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                return
            batch = [item]
            closing = False
            while len(batch) < self._max_batch and not self._pending.empty():
                more = self._pending.get()
                if more is None:
                    closing = True
                    break
                batch.append(more)
            self._enqueue(batch)
            if closing:
                return

    def _enqueue(self, batch: list[tuple[str, int, Future[None]]]) -> None:
        error: BaseException | None = None
        try:
            self._queue.enqueue_many([generation_job(generation_id, attempt) for generation_id, attempt, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            error = exc
        for *_, future in batch:
            try:
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
            except FutureStateError:
                pass
