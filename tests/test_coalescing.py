"""Concurrent requests share database round trips (app/api/coalesce.py), yet each gets its own answer.

GET /generations/{id}: never another user's generation, never a state older than the request.
POST /generations: creates share a transaction, but each succeeds or fails alone and is charged once.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from redis import Redis
from rq import Queue

from app import QUEUE_NAME
from app.api.auth import Role
from tests.stack import Stack, check_ledger_invariants

API_PREFIX = "/api/apps/pose-generator"


def _batch_histogram(stack: Stack, kind: str = "generation_read") -> tuple[float, float]:
    """(requests served, database calls) so far for one kind of coalesced call, from the API's metrics."""
    text = httpx.get(f"{stack.base_url}{API_PREFIX}/metrics-prometheus", timeout=10).text
    figures = []
    for part in ("sum", "count"):
        found = re.search(rf'^pose_api_batch_size_{part}\{{kind="{kind}"\}} (\S+)$', text, re.M)
        figures.append(float(found.group(1)) if found else 0.0)
    return figures[0], figures[1]


def test_concurrent_pollers_each_get_their_own_generation(fresh_stack: Callable[..., Stack]) -> None:
    stack = fresh_stack(workers=0)
    users = [stack.new_user(credits=10_000) for _ in range(4)]
    owned: dict[str, str] = {}  # generation id -> owner
    for i, user in enumerate(users):
        for j in range(5):
            answer = stack.create_generation(user, ["pose_tree_pose", "pose_waving_hello"][: 1 + j % 2],
                                             prompt=f"user {i} generation {j}")
            owned[answer.json()["generationId"]] = user
    with stack.db() as conn:
        expected = {
            gid: (prompt, poses)
            for gid, prompt, poses in conn.execute(
                "SELECT g.id, g.prompt, array_agg(p.pose_id ORDER BY p.position) FROM generations g"
                " JOIN generation_poses p ON p.generation_id = g.id GROUP BY g.id, g.prompt"
            ).fetchall()
        }
    tokens = {user: stack.token(user) for user in users}
    admin = stack.token("admin", Role.ADMIN)

    # Every user asks for every generation (own: 200 with its body; others': 404), plus ids that do not
    # exist, and the admin reads all; all at once, 64 requests in flight, repeated.
    requests: list[tuple[str, str, str | None]] = []
    for gid, owner in owned.items():
        for user in users:
            requests.append((tokens[user], gid, owner if user == owner else None))
        requests.append((admin, gid, owner))
    requests += [(tokens[users[0]], f"gen_missing_{i}", None) for i in range(10)]
    requests *= 6

    async def run() -> list[tuple[tuple[str, str, str | None], httpx.Response]]:
        limit = asyncio.Semaphore(64)
        async with httpx.AsyncClient(base_url=stack.http.base_url, timeout=30,
                                     limits=httpx.Limits(max_connections=64)) as client:
            async def one(request: tuple[str, str, str | None]) -> tuple[tuple[str, str, str | None], httpx.Response]:
                async with limit:
                    token, gid, _ = request
                    return request, await client.get(f"/generations/{gid}",
                                                     headers={"Authorization": f"Bearer {token}"})
            return await asyncio.gather(*(one(r) for r in requests))

    for (_, gid, owner), answer in asyncio.run(run()):
        if owner is None:
            assert answer.status_code == 404, (gid, answer.text)
            assert answer.json()["detail"] == f"generation {gid} not found"
            continue
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["generationId"] == gid
        assert (body["prompt"], [p["poseId"] for p in body["poses"]]) == (expected[gid][0], expected[gid][1])
        assert body["status"] == "queued" and body["creditsCharged"] == 30 * len(expected[gid][1])


def test_reads_waiting_on_the_database_go_together_in_one_query(fresh_stack: Callable[..., Stack]) -> None:
    stack = fresh_stack(workers=0)
    users = [stack.new_user(credits=10_000) for _ in range(4)]
    owned = {stack.create_generation(user, ["pose_tree_pose"]).json()["generationId"]: user
             for user in users for _ in range(4)}
    before = _batch_histogram(stack)
    results: list[httpx.Response] = []

    def poll(gid: str) -> None:
        with httpx.Client(base_url=stack.http.base_url, timeout=30) as client:
            results.append(client.get(f"/generations/{gid}", headers=stack.headers(owned[gid])))

    # The first read's query waits on a lock; everything that arrives meanwhile must gather behind it.
    with stack.db() as conn, conn.transaction(force_rollback=True):
        conn.execute("LOCK TABLE generations IN ACCESS EXCLUSIVE MODE")
        threads = [threading.Thread(target=poll, args=(gid,)) for gid in owned for _ in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while _batch_histogram(stack)[1] - before[1] < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # the other requests arrive and queue up behind it
    for thread in threads:
        thread.join()
    assert len(results) == 48 and {r.status_code for r in results} == {200}
    assert sorted(r.json()["generationId"] for r in results) == sorted(list(owned) * 3)
    served, queries = (a - b for a, b in zip(_batch_histogram(stack), before, strict=True))
    # One query for the first read, one for the other 47; 48 queries without coalescing.
    assert served == 48 and queries <= 3, f"{queries} queries for {served} reads"


def test_a_read_sees_what_was_committed_before_it_even_under_load(fresh_stack: Callable[..., Stack]) -> None:
    stack = fresh_stack(workers=0)
    user = stack.new_user(credits=10_000)
    watched = stack.create_generation(user, ["pose_tree_pose"], prompt="v0").json()["generationId"]
    noise = [stack.create_generation(user, ["pose_tree_pose"]).json()["generationId"] for _ in range(8)]
    headers = stack.headers(user)
    stop = threading.Event()
    failures: list[Any] = []

    def flood() -> None:  # keeps a batch in flight nearly all the time
        with httpx.Client(base_url=stack.http.base_url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                i += 1
                answer = client.get(f"/generations/{noise[i % len(noise)]}", headers=headers)
                if answer.status_code != 200:
                    failures.append(answer.status_code)

    threads = [threading.Thread(target=flood) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        with stack.db() as conn, httpx.Client(base_url=stack.http.base_url, timeout=30) as client:
            for version in range(1, 60):
                conn.execute("UPDATE generations SET prompt = %s WHERE id = %s", (f"v{version}", watched))
                conn.commit()
                assert client.get(f"/generations/{watched}", headers=headers).json()["prompt"] == f"v{version}"
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures


def test_creates_gathered_in_one_transaction_each_succeed_or_fail_alone(fresh_stack: Callable[..., Stack]) -> None:
    stack = fresh_stack(workers=0)
    rich, poor, repeater = stack.new_user(credits=10_000), stack.new_user(credits=30), stack.new_user(credits=10_000)
    key = "same-key-for-all-ten"
    bodies: list[tuple[str, dict[str, Any], dict[str, str]]] = (
        [("valid", {"poseIds": ["pose_tree_pose"], "prompt": f"rich {i}"}, stack.headers(rich)) for i in range(16)]
        + [("poor", {"poseIds": ["pose_tree_pose"], "prompt": f"poor {i}"}, stack.headers(poor)) for i in range(5)]
        + [("unknown", {"poseIds": ["pose_tree_pose", "pose_nope"], "prompt": "x"}, stack.headers(rich))
           for _ in range(5)]
        + [("repeat", {"poseIds": ["pose_tree_pose", "pose_waving_hello"], "prompt": "once"},
            {**stack.headers(repeater), "Idempotency-Key": key}) for _ in range(10)]
    )
    answers: list[tuple[str, httpx.Response]] = []

    def post(kind: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        with httpx.Client(base_url=stack.http.base_url, timeout=30) as client:
            answers.append((kind, client.post("/generations", json=body, headers=headers)))

    before = _batch_histogram(stack, "generation_create")
    # The first create waits on a lock; the others gather behind it into shared transactions.
    with stack.db() as conn, conn.transaction(force_rollback=True):
        conn.execute("LOCK TABLE generations IN ACCESS EXCLUSIVE MODE")
        threads = [threading.Thread(target=post, args=entry) for entry in bodies]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
    for thread in threads:
        thread.join()

    by_kind: dict[str, list[httpx.Response]] = {}
    for kind, answer in answers:
        by_kind.setdefault(kind, []).append(answer)
    assert [a.status_code for a in by_kind["valid"]] == [202] * 16
    assert sorted(a.status_code for a in by_kind["poor"]) == [202] + [402] * 4
    assert all(a.json()["balance"] == 0 for a in by_kind["poor"] if a.status_code == 402)
    assert {a.status_code for a in by_kind["unknown"]} == {422}
    assert all("pose_nope" in a.json()["detail"] for a in by_kind["unknown"])
    assert {a.status_code for a in by_kind["repeat"]} == {202}
    assert len({a.json()["generationId"] for a in by_kind["repeat"]}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in by_kind["repeat"]) == 9
    assert stack.balance(rich) == 10_000 - 16 * 30 and stack.balance(poor) == 0
    assert stack.balance(repeater) == 10_000 - 60
    with stack.db() as conn:
        check_ledger_invariants(conn)
        assert conn.execute("SELECT count(*) FROM generations").fetchone()[0] == 16 + 1 + 1
        queued = conn.execute("SELECT count(*) FROM generations WHERE status = 'queued'").fetchone()[0]
        assert queued == 18
    served, calls = (a - b for a, b in zip(_batch_histogram(stack, "generation_create"), before, strict=True))
    assert served == len(bodies) and calls <= len(bodies) / 4, f"{calls} transactions for {served} creates"
    # Every created generation has its job waiting in the queue.
    client = Redis.from_url(stack.redis_url)
    try:
        assert Queue(QUEUE_NAME, connection=client).count == 18
    finally:
        client.close()


def test_connections_killed_by_the_server_fail_no_request(fresh_stack: Callable[..., Stack]) -> None:
    """A batch carries many requests, so a dead pooled connection must not fail one: the pool checks a
    connection before handing it out and replaces a dead one."""
    stack = fresh_stack(workers=0)
    user = stack.new_user(credits=100_000)
    generations = [stack.create_generation(user, ["pose_tree_pose"]).json()["generationId"] for _ in range(8)]

    def burst() -> list[int]:
        codes: list[int] = []

        def get(gid: str) -> None:
            with httpx.Client(base_url=stack.http.base_url, timeout=30) as client:
                codes.append(client.get(f"/generations/{gid}", headers=stack.headers(user)).status_code)

        def post(i: int) -> None:
            with httpx.Client(base_url=stack.http.base_url, timeout=30) as client:
                codes.append(client.post("/generations", json={"poseIds": ["pose_tree_pose"], "prompt": f"p{i}"},
                                         headers=stack.headers(user)).status_code)

        threads = [threading.Thread(target=get, args=(gid,)) for gid in generations * 4]
        threads += [threading.Thread(target=post, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return codes

    assert set(burst()) <= {200, 202}  # the pool now holds several open connections
    with stack.db() as conn:
        killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                              " WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
    assert killed >= 1
    codes = burst()
    assert len(codes) == 44 and set(codes) <= {200, 202}, sorted(codes)
