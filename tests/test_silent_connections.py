"""Connections that go silent: a peer that stops answering without closing is noticed in bounded time.

One stack whose every long-lived connection runs through its own :class:`TcpProxy` (the API's Redis,
the worker's Redis and PostgreSQL, the exporter's Redis and PostgreSQL). Each test makes one of them
go silent — accept, never relay, never close, as a dropped NAT entry or a failed-over load balancer
does — and shows the system carry on: the generation completes within 60 s of the silence, charged
once, with no abandoned attempt counted as running or failed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from tests.fakes.tcp_proxy import TcpProxy
from tests.stack import Process, Stack, free_port, running_stack

pytestmark = pytest.mark.drill

POSES = ["pose_standing_confident", "pose_arms_crossed"]
PRICE = 30
SILENCE_BUDGET_SECONDS = 60


def proxied_url(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit((parts.scheme, f"{netloc[0]}@{host}" if len(netloc) == 2 else host, parts.path, parts.query,
                       parts.fragment))


def upstream(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", int(parts.port or (6379 if parts.scheme.startswith("redis") else 5432))


@dataclass
class Proxied:
    stack: Stack
    api_redis: TcpProxy
    api_pg: TcpProxy
    worker_redis: TcpProxy
    worker_pg: TcpProxy
    exporter_redis: TcpProxy
    exporter_pg: TcpProxy
    exporter_port: int
    redis: Redis

    def generation(self, user: str) -> str:
        answer = self.stack.create_generation(user, POSES)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["generationId"])

    def row(self, generation_id: str) -> tuple[str, int]:
        with self.stack.db() as conn:
            status, attempt = conn.execute("SELECT status, attempt FROM generations WHERE id = %s",
                                           (generation_id,)).fetchone()
        return status, attempt

    def wait_row(self, generation_id: str, status: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.row(generation_id)[0] != status:
            assert time.monotonic() < deadline, f"{generation_id} never {status}\n{self.stack.logs()}"
            time.sleep(0.05)

    def queue_counts(self) -> dict[str, int]:
        answer = self.stack.http.get("/health")
        return dict(answer.json()["checks"]["queue"]["counts"])

    def assert_completed_once(self, user: str, generation_id: str, silenced_at: float, credits: int) -> dict[str, Any]:
        left = SILENCE_BUDGET_SECONDS - (time.monotonic() - silenced_at)
        body = self.stack.wait_finished(user, generation_id, timeout=max(left, 0.1))
        took = time.monotonic() - silenced_at
        assert body["status"] == "completed", body
        assert all(pose["status"] == "completed" for pose in body["poses"]), body
        assert took < SILENCE_BUDGET_SECONDS, took
        print(f"completed {took:.1f} s after the silence")
        assert self.stack.balance(user) == credits - PRICE * len(POSES), "charged more than once or refunded"
        # The work-horse may still be finishing RQ's bookkeeping on a silenced connection (its read times
        # out, then it retries): the attempt stays active until then, within the same budget.
        while (counts := self.queue_counts())["active"] or counts["failed"]:
            assert time.monotonic() - silenced_at < SILENCE_BUDGET_SECONDS, counts
            time.sleep(0.5)
        return body


@pytest.fixture(scope="module")
def proxied(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    tmp = tmp_path_factory.mktemp("silent")
    with running_stack(template_db, tmp / "stack", workers=0, api=False, POSEGEN_LOCAL_LATENCY="2") as stack:
        redis_target, pg_target = upstream(stack.redis_url), upstream(stack.database_url)
        proxies = [TcpProxy(target).start() for target in (redis_target, pg_target, redis_target, pg_target,
                                                           redis_target, pg_target)]
        api_redis, api_pg, worker_redis, worker_pg, exporter_redis, exporter_pg = proxies
        exporter: Process | None = None
        redis = Redis.from_url(stack.redis_url)
        try:
            stack.env = {**stack.env, "REDIS_URL": proxied_url(stack.redis_url, api_redis),
                         "DATABASE_URL": proxied_url(stack.database_url, api_pg)}
            stack.start_api()
            stack.start_worker(REDIS_URL=proxied_url(stack.redis_url, worker_redis),
                               DATABASE_URL=proxied_url(stack.database_url, worker_pg),
                               POSEGEN_PROVIDER_CONCURRENCY="1")
            stack.wait_workers_ready(1)
            exporter_port = free_port()
            exporter = Process(["exporter", "--port", str(exporter_port)],
                               {**stack.env, "REDIS_URL": proxied_url(stack.redis_url, exporter_redis),
                                "DATABASE_URL": proxied_url(stack.database_url, exporter_pg)},
                               tmp / "exporter.log")
            yield Proxied(stack, api_redis, api_pg, worker_redis, worker_pg, exporter_redis, exporter_pg, exporter_port,
                          redis)
        finally:
            if exporter is not None:
                exporter.stop()
            for proxy in proxies:
                proxy.stop()
            redis.close()


def blocked_in_dequeue(proxied: Proxied) -> bool:
    index = str(proxied.stack.redis_index)
    # The worker blocks in BLPOP (two queues: new work and retries) or BLMOVE (one), a second at a time.
    return any(client.get("cmd") in ("blpop", "blmove") and str(client.get("db")) == index
               for client in proxied.redis.client_list())


def test_worker_redis_silent_while_blocked_in_dequeue(proxied: Proxied) -> None:
    """The job is handed to a BLMOVE whose answer never arrives: it sits in RQ's intermediate list looking
    queued. The worker's read times out and it reconnects; the reaper sees no live holder and re-queues."""
    stack = proxied.stack
    user = stack.new_user(credits=1000)
    deadline = time.monotonic() + 30
    while not blocked_in_dequeue(proxied):
        assert time.monotonic() < deadline, "the worker never blocked in BLMOVE"
        time.sleep(0.05)
    proxied.worker_redis.silence()
    silenced_at = time.monotonic()
    generation_id = proxied.generation(user)
    proxied.assert_completed_once(user, generation_id, silenced_at, 1000)
    # Attempt 2 when the job went to the blocked dequeue whose answer was lost (re-queued by the reaper);
    # attempt 1 when the block ended first and the job waited for the reconnected worker.
    assert proxied.row(generation_id)[0] == "completed"


def test_provider_slot_connection_silent_mid_generation(proxied: Proxied) -> None:
    """Two poses share one provider slot: the waiting pose polls, the holding pose renews and releases, all
    over the work-horse's Redis connection, which goes silent; each command times out and is retried."""
    stack = proxied.stack
    user = stack.new_user(credits=1000)
    generation_id = proxied.generation(user)
    proxied.wait_row(generation_id, "processing")
    time.sleep(0.3)  # the poses are at the provider slot
    assert proxied.worker_redis.silence() > 0
    silenced_at = time.monotonic()
    proxied.assert_completed_once(user, generation_id, silenced_at, 1000)


def test_worker_database_silent_mid_generation(proxied: Proxied) -> None:
    """The work-horse's PostgreSQL connection goes silent mid-generation: its statements time out, the attempt
    is abandoned (not failed), the reaper re-queues the generation when its lease lapses, and it completes."""
    stack = proxied.stack
    user = stack.new_user(credits=1000)
    generation_id = proxied.generation(user)
    proxied.wait_row(generation_id, "processing")
    assert proxied.worker_pg.silence() > 0
    silenced_at = time.monotonic()
    proxied.assert_completed_once(user, generation_id, silenced_at, 1000)
    assert proxied.row(generation_id)[1] >= 2


def test_api_redis_silent_at_enqueue(proxied: Proxied) -> None:
    """The API's pooled Redis connections go silent: the enqueue's read times out and redis-py retries it on a
    new connection, so the request is answered 202 and the generation runs."""
    stack = proxied.stack
    user = stack.new_user(credits=1000)
    assert stack.http.get("/health").status_code == 200  # the pool holds an open connection
    assert proxied.api_redis.silence() > 0
    silenced_at = time.monotonic()
    generation_id = proxied.generation(user)
    proxied.assert_completed_once(user, generation_id, silenced_at, 1000)


def test_api_database_silent(proxied: Proxied) -> None:
    """The API pool's connections go silent: a request on one is answered 503 within the API's database bound
    (the connection is closed and dropped from the pool), and the client's retry with the same
    Idempotency-Key is served on a fresh connection: one generation, charged once."""
    stack = proxied.stack
    user = stack.new_user(credits=1000)
    assert proxied.api_pg.silence() > 0
    silenced_at = time.monotonic()
    key = {"Idempotency-Key": f"silent-{user}"}
    while True:
        began = time.monotonic()
        answer = stack.create_generation(user, POSES, headers=key)
        assert time.monotonic() - began < 15, "a request hung on a silent database connection"
        if answer.status_code == 202:
            break
        assert answer.status_code == 503, answer.text
        assert time.monotonic() - silenced_at < SILENCE_BUDGET_SECONDS, "never accepted"
        time.sleep(0.5)
    generation_id = str(answer.json()["generationId"])
    deadline = time.monotonic() + SILENCE_BUDGET_SECONDS
    while True:  # polls may meet a silenced pooled connection too: 503, then served
        poll = stack.http.get(f"/generations/{generation_id}", headers=stack.headers(user))
        assert poll.status_code in (200, 503), poll.text
        if poll.status_code == 200:
            break
        assert time.monotonic() < deadline
    proxied.assert_completed_once(user, generation_id, silenced_at, 1000)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert answer.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def test_exporter_connections_silent(proxied: Proxied) -> None:
    """Both exporter connections go silent: a scrape or two reads the sources as down, then fresh connections
    read them again, with the counts of a generation finished meanwhile."""
    stack = proxied.stack
    port = proxied.exporter_port
    deadline = time.monotonic() + 30
    while True:
        try:
            first = scrape(port)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "exporter did not start"
            time.sleep(0.2)
    assert first[("pose_exporter_up", (("source", "postgres"),))] == 1
    assert first[("pose_exporter_up", (("source", "redis"),))] == 1
    assert proxied.exporter_redis.silence() > 0 and proxied.exporter_pg.silence() > 0
    silenced_at = time.monotonic()
    user = stack.new_user(credits=1000)
    generation_id = proxied.generation(user)
    stack.wait_finished(user, generation_id, timeout=SILENCE_BUDGET_SECONDS)
    with stack.db() as conn:
        completed = conn.execute("SELECT count(*) FROM generations WHERE status = 'completed'").fetchone()[0]
    while True:
        samples = scrape(port)
        up = {source: samples[("pose_exporter_up", (("source", source),))] for source in ("redis", "postgres")}
        counted = samples.get(("pose_generations_total", (("status", "completed"),)))
        if up == {"redis": 1, "postgres": 1} and counted == completed:
            break
        assert time.monotonic() - silenced_at < SILENCE_BUDGET_SECONDS, (up, counted, completed)
        time.sleep(0.5)
