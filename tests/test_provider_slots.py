"""The cross-process provider cap: a live holder keeps its slot past one lease, a killed one loses it within one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis as AsyncRedis

from app.worker.limiter import ProviderSlots
from tests.stack import claim_redis_db, redis_url, release_redis_db

LEASE = 1.0

HOLDER = """
import asyncio, sys
from redis.asyncio import Redis
from app.worker.limiter import ProviderSlots

async def main():
    slots = ProviderSlots(Redis.from_url(sys.argv[1]), 2, float(sys.argv[2]))
    async with slots.slot(), slots.slot():
        print("holding", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture
def slots_redis() -> Iterator[str]:
    index = claim_redis_db()
    try:
        yield redis_url(index)
    finally:
        release_redis_db(index)


async def _try_acquire(url: str, within: float) -> float | None:
    """Seconds until a slot was had, or None when none came within ``within``."""
    redis = AsyncRedis.from_url(url)
    slots = ProviderSlots(redis, 2, LEASE)
    started = time.monotonic()
    try:
        token = await asyncio.wait_for(slots.acquire(), within)
    except TimeoutError:
        return None
    finally:
        elapsed = time.monotonic() - started
    await slots.release(token)
    await redis.aclose()
    return elapsed


def test_live_holder_keeps_slots_and_killed_holder_frees_them_within_a_lease(slots_redis: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, slots_redis, str(LEASE)], stdout=subprocess.PIPE,
                              text=True, cwd=os.getcwd())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        # Three leases on, the live holder has renewed: the cap of 2 is still full.
        assert asyncio.run(_try_acquire(slots_redis, 3 * LEASE)) is None
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        waited = asyncio.run(_try_acquire(slots_redis, 10 * LEASE))
        assert waited is not None and waited <= 2 * LEASE, waited
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


def test_released_slot_is_not_renewed_back(slots_redis: str) -> None:
    async def scenario() -> int:
        redis = AsyncRedis.from_url(slots_redis)
        slots = ProviderSlots(redis, 2, LEASE)
        async with slots.slot():
            await asyncio.sleep(LEASE)
        await asyncio.sleep(LEASE)  # a renewal racing the release must not bring the slot back
        held = await redis.zcard("posegen:provider-slots")
        await redis.aclose()
        return held

    assert asyncio.run(scenario()) == 0


def test_a_deadline_while_waiting_for_a_slot_always_ends_the_wait(slots_redis: str) -> None:
    """A pose past its deadline must stop waiting, even when the cancellation lands inside a Redis call."""
    outcomes: list[str] = []

    async def scenario() -> None:
        redis = AsyncRedis.from_url(slots_redis)
        slots = ProviderSlots(redis, 1, 60)
        await slots.acquire()  # the cap is full for the whole test
        for i in range(200):
            try:
                await asyncio.wait_for(slots.acquire(), 0.02 + (i % 7) * 0.003)
                outcomes.append("acquired")
            except TimeoutError:
                outcomes.append("timed out")
        await redis.aclose()

    runner = threading.Thread(target=asyncio.run, args=(scenario(),), daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), f"a wait ignored its deadline after {len(outcomes)} waits"
    assert outcomes == ["timed out"] * 200


def test_a_slot_released_early_is_free_before_the_block_ends(slots_redis: str) -> None:
    """The pipeline gives a slot back when the provider's task is done (the download follows): another pose
    takes it at once, and the block's own release at its end does not free a second slot."""
    async def scenario() -> tuple[int, int, int]:
        redis = AsyncRedis.from_url(slots_redis)
        slots = ProviderSlots(redis, 1, LEASE)
        async with slots.slot() as held:
            await held.release()
            after_release = await redis.zcard("posegen:provider-slots")
            async with slots.slot():  # the cap is 1: this would wait for ever without the early release
                in_second = await redis.zcard("posegen:provider-slots")
                await held.release()  # idempotent: does not free the second holder's slot
                still = await redis.zcard("posegen:provider-slots")
        await redis.aclose()
        return after_release, in_second, still

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) == (0, 1, 1)
