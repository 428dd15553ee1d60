"""Per-caller limits hold across API processes and bound whatever a caller's requests write.

One stack for the module with two API processes (``posegen api`` on two ports, one database, one Redis),
each test with users of its own: 20 creates, 5 refused creates, 3 recorded error events and 40 reads per
caller per minute. Clients hit both processes at once, from many threads.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import API_PREFIX
from app.api.auth import Role
from tests.fakes.tcp_proxy import TcpProxy
from tests.stack import Process, Stack, free_port, running_stack

CREATES = 20
INVALID_CREATES = 5
ERROR_EVENTS = 3
READS = 40
CLIENTS = 16
POSES = ["pose_tree_pose"]


@pytest.fixture(scope="module")
def stack(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(template_db, tmp_path_factory.mktemp("limits"), workers=0,
                       POSEGEN_RATE_LIMIT_PER_MINUTE=str(CREATES),
                       POSEGEN_INVALID_CREATE_LIMIT_PER_MINUTE=str(INVALID_CREATES),
                       POSEGEN_CALLER_ERROR_EVENTS_PER_MINUTE=str(ERROR_EVENTS),
                       POSEGEN_READ_LIMIT_PER_MINUTE=str(READS)) as running:
        yield running


@pytest.fixture(scope="module")
def second_api(stack: Stack) -> Iterator[str]:
    """The API URL of a second ``posegen api`` process sharing the stack's database and Redis."""
    port = free_port()
    process = Process(["api", "--port", str(port)], stack.env, stack.tmp / "api-2.log")
    url = f"http://127.0.0.1:{port}{API_PREFIX}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.alive() and time.monotonic() < deadline, process.output()
            time.sleep(0.1)
        yield url
    finally:
        process.stop()


def in_parallel(urls: list[str], count: int, request: Callable[[httpx.Client, int], httpx.Response],
                ) -> list[httpx.Response]:
    """``count`` requests from :data:`CLIENTS` threads released at once, request ``i`` to ``urls[i % len]``."""
    start = threading.Barrier(CLIENTS)
    local = threading.local()

    def one(i: int) -> httpx.Response:
        if not hasattr(local, "clients"):
            local.clients = [httpx.Client(base_url=url, timeout=30) for url in urls]
            start.wait(timeout=30)
        return request(local.clients[i % len(urls)], i)

    with ThreadPoolExecutor(CLIENTS) as pool:
        # The first CLIENTS requests each open a thread's clients and wait for the others.
        return list(pool.map(one, range(count)))


def create(stack: Stack, user: str, poses: list[str] = POSES) -> Callable[[httpx.Client, int], httpx.Response]:
    headers = stack.headers(user)
    return lambda client, i: client.post("/generations", json={"poseIds": poses, "prompt": f"p{i}"},
                                         headers=headers)


def unrecorded_events(urls: list[str]) -> float:
    """``pose_api_error_events_unrecorded_total{error_type="VALIDATION_ERROR"}`` summed over the processes."""
    total = 0.0
    for url in urls:
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics-prometheus", timeout=10).text):
            total += sum(s.value for s in family.samples if s.name == "pose_api_error_events_unrecorded_total"
                         and s.labels["error_type"] == "VALIDATION_ERROR")
    return total


def validation_rows(stack: Stack, user: str) -> int:
    with stack.db() as conn:
        return int(conn.execute("SELECT count(*) FROM error_events WHERE user_id = %s"
                                " AND error_type = 'VALIDATION_ERROR'", (user,)).fetchone()[0])


def test_one_create_limit_holds_across_two_api_processes(stack: Stack, second_api: str) -> None:
    user = stack.new_user(credits=100_000)
    answers = in_parallel([f"{stack.base_url}{API_PREFIX}", second_api], 4 * CREATES, create(stack, user))
    codes = Counter(a.status_code for a in answers)
    assert codes == {202: CREATES, 429: 3 * CREATES}, codes
    accepted = [a for a in answers if a.status_code == 202]
    # Each accepted create saw the allowance one step further down: no two were counted as the same place.
    assert sorted(int(a.headers["RateLimit-Remaining"]) for a in accepted) == list(range(CREATES))
    for answer in answers:
        assert answer.headers["RateLimit-Limit"] == str(CREATES)
        assert ("Retry-After" in answer.headers) == (answer.status_code == 429)
        if answer.status_code == 429:
            assert 0 < int(answer.headers["Retry-After"]) <= 60 and "creates per minute" in answer.json()["detail"]
    assert stack.balance(user) == 100_000 - CREATES * 30


def test_a_flood_of_invalid_creates_writes_bounded_rows_and_answers_422_then_429(
        stack: Stack, second_api: str) -> None:
    urls = [f"{stack.base_url}{API_PREFIX}", second_api]
    flooder, bystander = stack.new_user(credits=1000), stack.new_user(credits=1000)
    unknown = create(stack, flooder, ["pose_does_not_exist"])
    unrecorded_before = unrecorded_events(urls)
    with httpx.Client(base_url=urls[1], timeout=30) as client:
        one_by_one = [unknown(client, i).status_code for i in range(3 * INVALID_CREATES)]
        assert one_by_one == [422] * INVALID_CREATES + [429] * 2 * INVALID_CREATES, one_by_one
        limited = unknown(client, 0)
        assert 0 < int(limited.headers["Retry-After"]) <= 60
        assert "invalid creates per minute" in limited.json()["detail"], limited.text
        # Blocked for a while is every create of the flooder, valid or not; nobody else is.
        assert create(stack, flooder)(client, 0).status_code == 429
        assert create(stack, bystander)(client, 0).status_code == 202
    flood = in_parallel(urls, 100, unknown)
    assert Counter(a.status_code for a in flood) == {429: 100}
    assert validation_rows(stack, flooder) == ERROR_EVENTS
    assert unrecorded_events(urls) - unrecorded_before == INVALID_CREATES - ERROR_EVENTS
    assert stack.balance(flooder) == 1000 and stack.balance(bystander) == 1000 - 30


def test_concurrent_invalid_creates_write_at_most_the_error_event_allowance(stack: Stack, second_api: str) -> None:
    urls = [f"{stack.base_url}{API_PREFIX}", second_api]
    flooder = stack.new_user(credits=1000)
    flood = in_parallel(urls, 200, create(stack, flooder, ["pose_does_not_exist"]))
    codes = Counter(a.status_code for a in flood)
    # Requests already past the check when the allowance ran out are still answered 422 (at most one per client).
    assert set(codes) == {422, 429} and INVALID_CREATES <= codes[422] <= INVALID_CREATES + CLIENTS, codes
    assert validation_rows(stack, flooder) == ERROR_EVENTS


def wait_intake(stack: Stack, urls: list[str], status: int) -> None:
    """Until every API process answers a create with ``status`` (503 paused, 202 open), asked by a user of its
    own (a process reads the pause at most a second late)."""
    waiter = stack.new_user(credits=100_000)
    deadline = time.monotonic() + 10
    for url in urls:
        while stack.http.post(f"{url}/generations", json={"poseIds": POSES, "prompt": "wait"},
                              headers=stack.headers(waiter)).status_code != status:
            assert time.monotonic() < deadline, f"{url} never answered {status}"
            time.sleep(0.05)


def test_refusals_during_a_planned_pause_are_free(stack: Stack, second_api: str) -> None:
    urls = [f"{stack.base_url}{API_PREFIX}", second_api]
    user = stack.new_user(credits=1000)
    admin = stack.headers("oncall", Role.ADMIN)
    paused = stack.http.post("/admin/pause", json={"scope": "intake", "reason": "limits test",
                                                   "retryAfterSeconds": 120}, headers=admin)
    assert paused.status_code in (200, 201), paused.text
    try:
        wait_intake(stack, urls, 503)
        refused = in_parallel(urls, 2 * CREATES, create(stack, user))
        assert [a.status_code for a in refused] == [503] * 2 * CREATES
        assert {a.headers["Retry-After"] for a in refused} == {"120"}
        # Each shows the allowance with its own place given back (others may still hold theirs).
        assert all(0 < int(a.headers["RateLimit-Remaining"]) <= CREATES for a in refused)
    finally:
        resumed = stack.http.post("/admin/resume", json={"scope": "intake"}, headers=admin)
        assert resumed.status_code in (200, 201), resumed.text
        wait_intake(stack, urls, 202)
    first = stack.create_generation(user, POSES)
    assert first.status_code == 202, first.text
    assert first.headers["RateLimit-Remaining"] == str(CREATES - 1)


def test_reads_are_limited_per_user_and_other_users_read_on(stack: Stack, second_api: str) -> None:
    urls = [f"{stack.base_url}{API_PREFIX}", second_api]
    poller, other = stack.new_user(credits=100), stack.new_user(credits=100)
    headers = stack.headers(poller)
    answers = in_parallel(urls, 3 * READS, lambda client, i: client.get("/credits", headers=headers))
    assert Counter(a.status_code for a in answers) == {200: READS, 429: 2 * READS}
    for answer in answers:
        if answer.status_code == 429:
            assert 0 < int(answer.headers["Retry-After"]) <= 60 and answer.headers["RateLimit-Limit"] == str(READS)
            assert "reads per minute" in answer.json()["detail"]
    assert stack.http.get(f"{urls[1]}/credits", headers=headers).status_code == 429
    assert stack.http.head(f"{urls[0]}/credits", headers=headers).status_code == 429
    for url in urls:
        assert stack.http.get(f"{url}/credits", headers=stack.headers(other)).json()["balance"] == 100
        assert stack.http.get(f"{url}/health").status_code == 200  # no token, no per-user limit


def batch_sizes(base_url: str) -> tuple[float, float]:
    """(polls per query at most 2, all polls per query) observed so far: ``pose_api_batch_size`` of
    ``generation_read``, the bucket le=2 and the count."""
    text = httpx.get(f"{base_url}{API_PREFIX}/metrics-prometheus", timeout=10).text
    samples = {(s.name, s.labels.get("le")): s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.labels.get("kind") == "generation_read"}
    return samples["pose_api_batch_size_bucket", "2.0"], samples["pose_api_batch_size_count", None]


def test_one_callers_many_connections_run_two_at_a_time(fresh_stack: Callable[..., Stack]) -> None:
    """With POSEGEN_CALLER_CONCURRENCY=2, 200 polls from one user over 16 connections all succeed, but never
    more than two of them run at once: no shared poll query ever serves more than two of them."""
    stack = fresh_stack(workers=0, POSEGEN_CALLER_CONCURRENCY="2")
    flooder = stack.new_user(credits=100)
    generation_id = stack.create_generation(flooder, POSES).json()["generationId"]
    headers = stack.headers(flooder)
    small_before, all_before = batch_sizes(stack.base_url)
    answers = in_parallel([f"{stack.base_url}{API_PREFIX}"], 200,
                          lambda client, i: client.get(f"/generations/{generation_id}", headers=headers))
    assert Counter(a.status_code for a in answers) == {200: 200}
    small, every = batch_sizes(stack.base_url)
    assert every - all_before > 0 and small - small_before == every - all_before, (small, every)


def test_reads_are_answered_at_once_while_the_apis_redis_is_silent(fresh_stack: Callable[..., Stack]) -> None:
    """The read limit fails open: with every connection to Redis silent (accepted, never answered), the first
    read waits for one Redis timeout (2 s) and the reads after it do not wait."""
    stack = fresh_stack(workers=0, api=False)
    parts = urlsplit(stack.redis_url)
    with TcpProxy((parts.hostname or "127.0.0.1", int(parts.port or 6379))) as proxy:
        stack.env = {**stack.env, "REDIS_URL": f"redis://127.0.0.1:{proxy.port}{parts.path}",
                     "POSEGEN_READ_LIMIT_PER_MINUTE": str(READS)}
        stack.start_api()
        user = stack.new_user(credits=100)
        assert stack.balance(user) == 100
        proxy.silence(new_connections=True)
        took = []
        for _ in range(10):
            began = time.monotonic()
            assert stack.balance(user) == 100
            took.append(time.monotonic() - began)
        assert took[0] < 4 and max(took[1:]) < 0.5, took
