"""FLUX completion by webhook, polling as the fallback: real API and worker against the fake FLUX.

The fake FLUX posts a signed webhook to the API when a task ends (or drops, delays, duplicates or forges
one); the API verifies it and wakes the worker through Redis; the worker reads the task from its polling
URL. One stack for the module: FLUX latency 0.5 s, fallback poll every 2 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from app.providers.flux_webhooks import webhook_secret
from app.settings import Settings
from tests.fakes.flux_server import FakeFlux
from tests.stack import JWT_SECRET, Stack, check_ledger_invariants, running_stack

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]
LATENCY = 0.5
FALLBACK_POLL = 2.0
WEBHOOK_PATH = "/webhooks/flux"


@pytest.fixture(scope="module")
def fake_flux() -> Iterator[FakeFlux]:
    with FakeFlux(latency=LATENCY, webhook_delay=0.5) as fake:
        yield fake


@pytest.fixture(scope="module")
def hooked(template_db: str, tmp_path_factory: pytest.TempPathFactory, fake_flux: FakeFlux) -> Iterator[Stack]:
    env = {"POSEGEN_PROVIDER": "flux", "FLUX_API_KEY": fake_flux.api_key, "FLUX_BASE_URL": fake_flux.base_url,
           "FLUX_TIMEOUT_SECONDS": "2", "FLUX_DEADLINE_SECONDS": "20", "FLUX_POLL_INTERVAL_SECONDS": "0.05",
           "FLUX_WEBHOOKS": "true", "FLUX_WEBHOOK_POLL_INTERVAL_SECONDS": str(FALLBACK_POLL)}
    with running_stack(template_db, tmp_path_factory.mktemp("webhooks"), workers=0, api=False, **env) as stack:
        # FLUX reaches the API at its own address: known only once the stack has picked its port.
        stack.env["POSEGEN_PUBLIC_BASE_URL"] = stack.base_url
        stack.start_api()
        stack.start_worker()
        stack.wait_workers_ready(1)
        yield stack


def run_generation(stack: Stack, prompt: str, poses: list[str] = POSES) -> dict[str, Any]:
    user = stack.new_user(credits=1000)
    created = stack.create_generation(user, poses, prompt=prompt)
    assert created.status_code == 202, created.text
    done = stack.wait_finished(user, created.json()["generationId"], timeout=60)
    assert stack.balance(user) == 1000 - 30 * len(poses) + done["creditsRefunded"]
    return done


def provider_ms(stack: Stack, generation_id: str) -> list[int]:
    with stack.db() as conn:
        rows = conn.execute("SELECT provider_ms FROM generation_poses WHERE generation_id = %s ORDER BY position",
                            (generation_id,)).fetchall()
    return [row[0] for row in rows]


def tasks_of(fake: FakeFlux, prompt: str) -> list[Any]:
    return [task for task in fake.tasks() if task.prompt == prompt]


def signed(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    import hashlib
    import hmac

    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-webhook-timestamp": stamp, "x-webhook-signature": f"sha256={digest}"}


def test_a_run_completes_by_webhook_with_one_poll_per_task(hooked: Stack, fake_flux: FakeFlux) -> None:
    prompt = "by webhook"
    done = run_generation(hooked, prompt)
    assert done["status"] == "completed" and done["creditsRefunded"] == 0
    tasks = tasks_of(fake_flux, prompt)
    assert len(tasks) == 4
    # Polling every 0.05 s would read each 0.5 s task about ten times; woken by the webhook, once.
    assert [task.polls for task in tasks] == [1, 1, 1, 1]
    # Woken well before the 2 s fallback poll: the slot is released as soon as FLUX is done.
    assert all(LATENCY * 1000 <= ms < FALLBACK_POLL * 1000 for ms in provider_ms(hooked, done["generationId"])), \
        provider_ms(hooked, done["generationId"])
    ids = {task.id for task in tasks}
    assert {(d.task_id, d.status_code) for d in fake_flux.deliveries() if d.task_id in ids} == \
        {(task_id, 200) for task_id in ids}


def test_a_dropped_webhook_is_caught_by_the_fallback_poll(hooked: Stack, fake_flux: FakeFlux) -> None:
    prompt = "dropped [webhook:drop]"
    done = run_generation(hooked, prompt, POSES[:2])
    assert done["status"] == "completed" and done["creditsRefunded"] == 0
    assert not [d for d in fake_flux.deliveries() if d.task_id in {t.id for t in tasks_of(fake_flux, prompt)}]
    # Caught by the first fallback poll: within one fallback interval (+ 1 s for the poll and the download).
    waited = provider_ms(hooked, done["generationId"])
    assert all(FALLBACK_POLL * 1000 <= ms < (FALLBACK_POLL + 1) * 1000 for ms in waited), waited


def test_a_delayed_webhook_still_completes_the_pose(hooked: Stack, fake_flux: FakeFlux) -> None:
    done = run_generation(hooked, "delayed [webhook:delay]", POSES[:1])
    assert done["status"] == "completed"
    assert (LATENCY + 0.5) * 1000 <= provider_ms(hooked, done["generationId"])[0] < FALLBACK_POLL * 1000


def test_a_duplicate_webhook_is_harmless(hooked: Stack, fake_flux: FakeFlux) -> None:
    prompt = "twice [webhook:duplicate]"
    done = run_generation(hooked, prompt, POSES[:2])
    assert done["status"] == "completed" and done["creditsRefunded"] == 0
    assert [p["status"] for p in done["poses"]] == ["completed", "completed"]
    ids = {t.id for t in tasks_of(fake_flux, prompt)}
    deadline = time.monotonic() + 5
    while len([d for d in fake_flux.deliveries() if d.task_id in ids]) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(d.status_code for d in fake_flux.deliveries() if d.task_id in ids) == [200] * 4
    with hooked.db() as conn:
        (images,) = conn.execute("SELECT count(*) FROM generation_poses WHERE generation_id = %s"
                                 " AND status = 'completed'", (done["generationId"],)).fetchone()
        check_ledger_invariants(conn)
    assert images == 2


def test_a_forged_webhook_is_refused_and_completes_nothing(hooked: Stack, fake_flux: FakeFlux) -> None:
    prompt = "forged [webhook:forge]"
    done = run_generation(hooked, prompt, POSES[:1])
    assert done["status"] == "completed"
    (task,) = tasks_of(fake_flux, prompt)
    deliveries = [d for d in fake_flux.deliveries() if d.task_id == task.id]
    assert [(d.forged, d.status_code) for d in deliveries] == [(True, 401), (False, 200)]
    # The forgery claimed Ready at submission; the pose still waited for FLUX's real result.
    assert provider_ms(hooked, done["generationId"])[0] >= LATENCY * 1000


@pytest.fixture(scope="module")
def redis_client(hooked: Stack) -> Iterator[Redis]:
    client = Redis.from_url(hooked.redis_url)
    yield client
    client.close()


def test_badly_signed_stale_or_unsigned_deliveries_are_401_and_change_nothing(
    hooked: Stack, redis_client: Redis
) -> None:
    secret = webhook_secret(Settings(jwt_secret=JWT_SECRET))
    body = json.dumps({"task_id": "forged-task", "status": "Ready", "result": {"sample": "http://x/y.png"}}).encode()
    attempts = {
        "wrong secret": signed(body, "guessed"),
        "stale": signed(body, secret, int(time.time()) - 3600),
        "unsigned": {"content-type": "application/json"},
        "tampered body": signed(body.replace(b"Ready", b"Error"), secret),
    }
    for name, headers in attempts.items():
        answer = hooked.http.post(WEBHOOK_PATH, content=body, headers=headers)
        assert answer.status_code == 401, (name, answer.text)
        assert "FLUX webhook refused" in answer.json()["detail"], name
    assert redis_client.exists("posegen:flux-webhook:forged-task") == 0
    # The same body, rightly signed, is taken: the refusals above were for the signature alone.
    assert hooked.http.post(WEBHOOK_PATH, content=body, headers=signed(body, secret)).status_code == 200
    assert redis_client.lrange("posegen:flux-webhook:forged-task", 0, -1) == [b"Ready"]


def test_a_replayed_delivery_changes_nothing_and_a_task_keeps_one_wake_up(
    hooked: Stack, redis_client: Redis
) -> None:
    """A captured delivery replayed inside the replay window (once grew a task's wake-up list by one entry per
    replay: 2,006 entries after 2,000) is taken once: the list, its expiry and the worker's wake-ups stay as
    they were. Distinct genuine deliveries of one task (FLUX retrying) keep one wake-up."""
    secret = webhook_secret(Settings(jwt_secret=JWT_SECRET))
    key = "posegen:flux-webhook:replayed-task"
    body = json.dumps({"task_id": "replayed-task", "status": "Ready", "result": {"sample": "http://x/y.png"}}).encode()
    captured = signed(body, secret)
    first = hooked.http.post(WEBHOOK_PATH, content=body, headers=captured)
    assert first.status_code == 200, first.text
    ttl = redis_client.ttl(key)
    with httpx.Client(base_url=hooked.http.base_url, timeout=30) as client:
        replays = [client.post(WEBHOOK_PATH, content=body, headers=captured) for _ in range(500)]
    assert {r.status_code for r in replays} == {200}  # FLUX retrying a delivery it thinks lost is answered
    assert redis_client.lrange(key, 0, -1) == [b"Ready"]
    assert redis_client.ttl(key) <= ttl  # not even its expiry moved
    assert first.json()["duplicate"] is False and {r.json()["duplicate"] for r in replays} == {True}
    now = int(time.time())
    for delay in range(1, 21):  # FLUX re-signing a delivery it believes lost, twenty times
        retried = signed(body, secret, now - delay)
        assert hooked.http.post(WEBHOOK_PATH, content=body, headers=retried).status_code == 200
    assert redis_client.lrange(key, 0, -1) == [b"Ready"]


def test_an_oversized_or_malformed_delivery_is_refused(hooked: Stack) -> None:
    secret = webhook_secret(Settings(jwt_secret=JWT_SECRET))
    big = json.dumps({"task_id": "t", "status": "Ready", "pad": "x" * 20_000}).encode()
    assert hooked.http.post(WEBHOOK_PATH, content=big, headers=signed(big, secret)).status_code == 413
    no_id = json.dumps({"status": "Ready"}).encode()
    answer = hooked.http.post(WEBHOOK_PATH, content=no_id, headers=signed(no_id, secret))
    assert answer.status_code == 422 and "task_id" in answer.json()["detail"]


DEFAULT_FALLBACK_POLL = 5.0  # FLUX_WEBHOOK_POLL_INTERVAL_SECONDS's default, the same as the slot client's timeout
LATE_TASK = 6.0  # ready during the second wait


def test_a_webhook_wakes_the_worker_on_time_with_the_default_fallback_interval(
    template_db: str, tmp_path: Path
) -> None:
    """The worker's wait for a webhook (BLPOP for the 5 s interval) once ran on a client whose socket timeout was
    the same 5 s: the wait failed at 5 s and the worker then slept a further interval, so a task ready at 6 s,
    its webhook in at once, was picked up at about 10 s. It is picked up promptly."""
    env = {"POSEGEN_PROVIDER": "flux", "FLUX_TIMEOUT_SECONDS": "2", "FLUX_DEADLINE_SECONDS": "30",
           "FLUX_POLL_INTERVAL_SECONDS": "0.05", "FLUX_WEBHOOKS": "true"}
    with FakeFlux(latency=LATE_TASK) as flux, running_stack(
        template_db, tmp_path, workers=0, api=False, FLUX_API_KEY=flux.api_key, FLUX_BASE_URL=flux.base_url, **env
    ) as stack:
        assert "FLUX_WEBHOOK_POLL_INTERVAL_SECONDS" not in stack.env
        stack.env["POSEGEN_PUBLIC_BASE_URL"] = stack.base_url
        stack.start_api()
        stack.start_worker()
        stack.wait_workers_ready(1)
        done = run_generation(stack, "late", POSES[:1])
        assert done["status"] == "completed", done
        (task,) = flux.tasks()
        assert [(d.task_id, d.status_code) for d in flux.deliveries()] == [(task.id, 200)]
        waited = provider_ms(stack, done["generationId"])[0] / 1000
        # Submitted, woken by the webhook at 6 s, one poll and the download: well before the 10 s of old.
        assert LATE_TASK <= waited < LATE_TASK + 2.5, f"picked up {waited - LATE_TASK:.2f} s after the task was ready"
        assert task.polls <= 2  # the fallback poll at 5 s, and the one the webhook woke


def test_webhooks_without_a_public_url_refuse_to_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "app.cli", "api", "--port", "1"], capture_output=True, text=True,
                            env={"FLUX_WEBHOOKS": "true", "PATH": "/usr/bin:/bin"}, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    assert "FLUX_WEBHOOKS=true needs POSEGEN_PUBLIC_BASE_URL" in result.stderr


def test_without_webhooks_the_route_does_not_exist(stack: Stack) -> None:
    answer = httpx.post(f"{stack.base_url}/api/apps/pose-generator{WEBHOOK_PATH}", content=b"{}")
    assert answer.status_code in (404, 405)
