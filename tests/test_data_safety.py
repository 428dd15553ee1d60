"""Tests never touch data they did not create: the machine's Redis and PostgreSQL are shared."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from redis import Redis

from tests.stack import TEST_REDIS, Stack, claim_redis_db, release_redis_db


def test_stacks_use_a_redis_this_run_started_not_the_one_at_redis_url(stack: Stack) -> None:
    machine = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ours = urlsplit(stack.redis_url)
    assert ours.port == TEST_REDIS.port and ours.port != (machine.port or 6379)


def test_releasing_a_stack_database_leaves_other_redis_servers_alone() -> None:
    """Claim and release (which flushes) many indexes; a key of someone else's on REDIS_URL stays."""
    machine = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), socket_timeout=2)
    try:
        machine.ping()
    except Exception:  # noqa: BLE001 - no Redis at REDIS_URL: nothing there to protect
        machine = None  # type: ignore[assignment]
    key = f"someone-elses-key-{os.getpid()}"
    if machine is not None:
        machine.set(key, "precious")
    try:
        claimed = [claim_redis_db() for _ in range(3)]
        for index in claimed:
            Redis.from_url(TEST_REDIS.url(index)).set("stack-key", "x")
        for index in claimed:
            release_redis_db(index)
        for index in claimed:
            assert Redis.from_url(TEST_REDIS.url(index)).dbsize() == 0
        if machine is not None:
            assert machine.get(key) == b"precious"
    finally:
        if machine is not None:
            machine.delete(key)
