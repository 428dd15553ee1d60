"""Dependencies down: the API says so quickly, charges nothing and loses nothing."""

from __future__ import annotations

import time

from tests.stack import Stack, check_ledger_invariants, free_port


def test_queue_unreachable_is_503_and_credits_are_kept(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=0, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    user = stack.new_user(credits=200)
    began = time.monotonic()
    answer = stack.create_generation(user, ["pose_tree_pose", "pose_arms_crossed"], headers={"Idempotency-Key": "k1"})
    assert answer.status_code == 503, answer.text
    assert time.monotonic() - began < 5
    assert "nothing was charged" in answer.json()["detail"]
    assert stack.balance(user) == 200
    with stack.db() as conn:
        status, refunded = conn.execute(
            "SELECT status, credits_refunded FROM generations WHERE user_id = %s", (user,)).fetchone()
        assert (status, refunded) == ("failed", 60)
        check_ledger_invariants(conn)
    # The key was released: a retry is a new attempt, not a replay of the failed one.
    retry = stack.create_generation(user, ["pose_tree_pose"], headers={"Idempotency-Key": "k1"})
    assert retry.status_code == 503
    assert stack.balance(user) == 200


def test_health_is_503_within_two_seconds_when_redis_is_down(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=0, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    began = time.monotonic()
    answer = stack.http.get("/health")
    assert time.monotonic() - began < 2.0
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"]["status"] == "connected"
    assert body["checks"]["redis"]["status"] == "disconnected"
    assert body["checks"]["queue"]["status"] == "unavailable"


def test_health_is_503_within_two_seconds_when_postgres_is_down(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=0, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    for _ in range(2):  # the second call must not be slower while the pool keeps failing
        began = time.monotonic()
        answer = stack.http.get("/health")
        assert time.monotonic() - began < 2.0
        assert answer.status_code == 503
        assert answer.json()["checks"]["database"]["status"] == "disconnected"
        assert answer.json()["checks"]["redis"]["status"] == "connected"


def test_health_shape_matches_the_seed(stack: Stack) -> None:
    body = stack.http.get("/health").json()
    # The seed's fields, plus faultDrill (whether POSEGEN_FAULTS injects failures).
    assert set(body) == {"status", "timestamp", "app", "version", "checks", "phase", "faultDrill"}
    assert body["status"] == "healthy" and body["app"] == "pose-generator" and body["version"] == "1.0.0"
    assert body["phase"] == "Production Ready" and body["timestamp"].endswith("Z")
    assert body["checks"]["database"] == {"status": "connected"}
    assert body["checks"]["redis"] == {"status": "connected"}
    assert body["checks"]["queue"]["status"] == "operational"
    assert set(body["checks"]["queue"]["counts"]) == {"waiting", "active", "completed", "failed", "delayed"}


def test_generation_creation_is_rate_limited_per_user(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=0, POSEGEN_RATE_LIMIT_PER_MINUTE="5")
    hasty, patient = stack.new_user(credits=10_000), stack.new_user(credits=10_000)
    codes = [stack.create_generation(hasty, ["pose_tree_pose"]).status_code for _ in range(7)]
    assert codes == [202] * 5 + [429] * 2
    limited = stack.create_generation(hasty, ["pose_tree_pose"])
    assert limited.status_code == 429
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert stack.balance(hasty) == 10_000 - 5 * 30
    # Another user, and reads, are not affected.
    assert stack.create_generation(patient, ["pose_tree_pose"]).status_code == 202
    assert stack.http.get("/generations", headers=stack.headers(hasty)).status_code == 200
