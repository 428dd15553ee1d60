"""At most N requests of one caller run at once in an API process; the caller's others wait their turn.

A rate limit alone does not keep one caller from crowding out the others: a client that ignores 429 and
``Retry-After`` keeps every one of its connections busy, and the event loop serves ready work first come
first served, so another user's request waits behind one step of each of them at every ``await``. A
refusal costs about as much as a shared poll (bench/read_limits.py). Here a caller's requests beyond N
wait parked on a semaphore, which costs the loop nothing, so at most N of them are ever ready to run. Per
process by nature: the event loop is what it shares out. How many can wait is bounded by the connections a
client may hold (the HTTP edge's concern).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class _Turns:
    semaphore: asyncio.Semaphore
    holders: int  # requests holding or waiting for a turn


class CallerConcurrency:
    """:meth:`acquire` a turn for a caller's request (waiting while ``limit`` of its requests run), and
    :meth:`release` it when the request is answered."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._callers: dict[str, _Turns] = {}

    async def acquire(self, caller: str) -> None:
        turns = self._callers.get(caller)
        if turns is None:
            turns = self._callers[caller] = _Turns(asyncio.Semaphore(self.limit), 0)
        turns.holders += 1
        try:
            await turns.semaphore.acquire()
        except BaseException:  # cancelled while waiting: it never held a turn
            self._leave(caller, turns)
            raise

    def release(self, caller: str) -> None:
        turns = self._callers[caller]
        turns.semaphore.release()
        self._leave(caller, turns)

    def _leave(self, caller: str, turns: _Turns) -> None:
        turns.holders -= 1
        if not turns.holders:  # idle callers leave no trace
            del self._callers[caller]
