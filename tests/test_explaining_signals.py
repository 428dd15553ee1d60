"""The signals that explain an incident, each checked against what the test itself caused or observed.

- Provider saturation: with the fake FLUX holding tasks, the exporter's slots in use equal the tasks the
  fake has in flight; the 429s it counts are the 429s the fake answered; every pose's slot wait and task
  time is one observation.
- Stuck work: a frozen worker's generation shows as the oldest running one, its age growing with the
  clock; a killed work-horse is one failed job and exactly one re-queue.
- Releases: the API, the worker and the exporter all say which version and revision they run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from app import __version__
from app.worker.limiter import ProviderSlots, advertise_limit
from tests.fakes.flux_server import FakeFlux
from tests.stack import Process, Stack, free_port
from tests.support.exporter import Samples, parse, promtool_problems, scrape, value

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]
REVISION = "test-rev-1a2b3c"


def start_exporter(stack: Stack) -> int:
    port = free_port()
    process = Process(["exporter", "--port", str(port)], stack.env, stack.tmp / f"exporter-{port}.log")
    stack.workers.append(process)  # stopped with the stack's processes
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return port
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"exporter did not start:\n{process.output()}")


def wait_for(what: str, check: Callable[[], Any], timeout: float, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s\n{stack.logs()}")


def db_row(stack: Stack, query: str, *params: Any) -> tuple[Any, ...]:
    with stack.db() as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return tuple(row)


def test_slots_in_use_are_the_holders_with_a_live_lease(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=0, api=False, POSEGEN_PROVIDER_CONCURRENCY="5")
    port = start_exporter(stack)

    def exported() -> tuple[float, float]:
        samples = parse(scrape(port).text)
        return value(samples, "pose_provider_slots_in_use"), value(samples, "pose_provider_slots_limit")

    async def hold(lease_seconds: float) -> str:
        redis = AsyncRedis.from_url(stack.redis_url)
        try:
            return await ProviderSlots(redis, 5, lease_seconds).acquire()
        finally:
            await redis.aclose()

    async def release(token: str) -> None:
        redis = AsyncRedis.from_url(stack.redis_url)
        try:
            await ProviderSlots(redis, 5).release(token)
        finally:
            await redis.aclose()

    assert exported() == (0, 5)  # no worker advertised a cap yet: the exporter's own setting
    asyncio.run(hold(0.5))  # a holder that died: nobody renews its lease
    held = [asyncio.run(hold(60)) for _ in range(3)]
    assert exported() == (4, 5)
    time.sleep(0.7)
    assert exported() == (3, 5)
    asyncio.run(release(held[0]))
    advertise_limit(Redis.from_url(stack.redis_url), 7)
    assert exported() == (2, 7)


@pytest.fixture
def fake_flux() -> Iterator[FakeFlux]:
    with FakeFlux(latency=2.0, retry_after=0.1) as fake:
        yield fake


@pytest.mark.tools
def test_provider_saturation_is_what_the_provider_saw(fresh_stack, fake_flux: FakeFlux) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(
        workers=1, POSEGEN_PROVIDER="flux", FLUX_API_KEY=fake_flux.api_key, FLUX_BASE_URL=fake_flux.base_url,
        FLUX_TIMEOUT_SECONDS="2", FLUX_DEADLINE_SECONDS="30", FLUX_MAX_RETRIES="5",
        FLUX_POLL_INTERVAL_SECONDS="0.05", POSEGEN_PROVIDER_CONCURRENCY="2", POSEGEN_REVISION=REVISION,
    )
    port = start_exporter(stack)
    stack.wait_workers_ready(1)
    before = parse(scrape(port).text)
    assert value(before, "pose_provider_slots_in_use") == 0
    assert value(before, "pose_provider_slots_limit") == 2
    for step in ("submit", "poll", "download"):
        assert value(before, "pose_provider_rate_limited_total", step=step) == 0
    fake_flux.fail_next("status_429", n=3)
    user = stack.new_user(credits=1000)
    generation_id = stack.create_generation(user, POSES).json()["generationId"]

    def held_equals_in_flight() -> bool:
        # Read the fake, the exporter, then the fake again: equal and steady means equal at the scrape.
        first = fake_flux.in_flight
        exported = value(parse(scrape(port).text), "pose_provider_slots_in_use")
        return first == fake_flux.in_flight == exported == 2

    wait_for("slots in use equal to the fake's tasks in flight (2, the cap)", held_equals_in_flight, 20, stack)
    done = stack.wait_finished(user, generation_id, timeout=60)
    assert done["status"] == "completed", done

    stats = fake_flux.stats()
    samples = parse(scrape(port).text)
    assert stats["rate_limited"] == 3 and stats["accepted"] == 4, stats
    assert value(samples, "pose_provider_rate_limited_total", step="submit") == stats["rate_limited"]
    assert value(samples, "pose_provider_retries_total", reason="rate_limited") == stats["rate_limited"]
    for reason in ("server_error", "timeout", "network"):
        assert value(samples, "pose_provider_retries_total", reason=reason) == 0
    assert value(samples, "pose_provider_task_duration_seconds_count") == stats["accepted"]
    assert value(samples, "pose_provider_task_duration_seconds_bucket", le="1.0") == 0  # latency is 2 s
    assert value(samples, "pose_provider_slot_wait_seconds_count") == len(POSES)
    # Two poses got a slot at once; the other two waited for a task of about 2 s to end.
    assert value(samples, "pose_provider_slot_wait_seconds_bucket", le="0.5") == 2
    assert value(samples, "pose_provider_slot_wait_seconds_sum") >= 2 * 1.5
    assert value(samples, "pose_provider_slots_in_use") == 0
    assert not promtool_problems(scrape(port).text)

    # Releases: every process names its version and the revision it was built from.
    api = httpx.get(f"{stack.base_url}/metrics-prometheus", timeout=5).text
    worker = httpx.get(f"http://127.0.0.1:{stack.workers[0].metrics_port}/metrics", timeout=5).text
    for text in (api, worker, scrape(port).text):
        assert value(parse(text), "pose_build_info", version=__version__, revision=REVISION) == 1


def job_counts(port: int) -> Samples:
    return parse(scrape(port).text)


def test_stuck_and_abandoned_work_is_counted_as_it_happened(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=1, POSEGEN_LOCAL_LATENCY="3", POSEGEN_MAX_ATTEMPTS="2")
    port = start_exporter(stack)
    worker = stack.workers[0]
    user = stack.new_user(credits=1000)
    idle = job_counts(port)
    assert value(idle, "pose_generation_oldest_running_age_seconds") == 0
    assert value(idle, "pose_generation_requeues_total", reason="lease_expired") == 0
    assert value(idle, "pose_job_failures_total", reason="work_horse_died") == 0

    def kill_work_horse_of(generation_id: str, attempt: int) -> None:
        wait_for(f"{generation_id} processing attempt {attempt}", lambda: db_row(
            stack, "SELECT status, attempt FROM generations WHERE id = %s", generation_id) == ("processing", attempt),
            20, stack)
        horses = worker.children()
        assert len(horses) == 1, horses
        os.kill(horses[0], signal.SIGKILL)

    # A work-horse killed mid-generation: one failed job and exactly one re-queue.
    first = stack.create_generation(user, POSES[:1]).json()["generationId"]
    kill_work_horse_of(first, 1)
    wait_for("the re-queue counted", lambda: value(
        job_counts(port), "pose_generation_requeues_total", reason="lease_expired") == 1, 20, stack)
    after_one = job_counts(port)
    assert value(after_one, "pose_job_failures_total", reason="work_horse_died") == 1
    assert value(after_one, "pose_generation_attempts_exhausted_total", reason="lease_expired") == 0

    # Killed again on its last attempt: no re-queue, the generation fails and is refunded.
    kill_work_horse_of(first, 2)
    done = stack.wait_finished(user, first, timeout=40)
    assert done["status"] == "failed" and done["errorType"] == "TIMEOUT_ERROR"
    after = job_counts(port)
    assert value(after, "pose_job_failures_total", reason="work_horse_died") == 2
    assert value(after, "pose_generation_requeues_total", reason="lease_expired") == 1
    assert value(after, "pose_generation_attempts_exhausted_total", reason="lease_expired") == 1
    assert value(after, "pose_generation_requeues_total", reason="job_lost") == 0
    assert value(after, "pose_job_failures_total", reason="exception") == 0

    # A frozen worker: its generation stays "processing" and its age grows with the clock.
    second = stack.create_generation(user, POSES[:1]).json()["generationId"]
    wait_for("second generation processing", lambda: db_row(
        stack, "SELECT status FROM generations WHERE id = %s", second) == ("processing",), 20, stack)
    frozen = [*worker.children(), worker.pid]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        early = value(job_counts(port), "pose_generation_oldest_running_age_seconds")
        time.sleep(2.0)
        late = value(job_counts(port), "pose_generation_oldest_running_age_seconds")
        (in_database,) = db_row(stack, "SELECT extract(epoch FROM now() - attempt_started_at)::float8"
                                       " FROM generations WHERE id = %s AND status = 'processing'", second)
        assert late - early >= 1.9, (early, late)
        assert late == pytest.approx(in_database, abs=0.5)
        limit = value(job_counts(port), "pose_generation_time_limit_seconds")
        assert limit == (300 + 60) * 2 + 60  # default deadline, 10 poses in rounds of 8, plus slack
    finally:
        worker.kill(signal.SIGKILL)
    # Counters kept in the database stand after the worker is gone.
    assert value(job_counts(port), "pose_generation_requeues_total", reason="lease_expired") == 1
