"""A coordinated Sentinel failover (``SENTINEL FAILOVER``: the old master keeps answering until Sentinel demotes it,
about 10 s later): a client of ``app.connections`` moves to the new master within a second, so writes made after
that second are not lost with the old master's resync (redis-py's own pool would keep its connections on the old
master until the demotion)."""

from __future__ import annotations

import time

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.connections import MASTER_CHECK_SECONDS, async_redis_client, redis_client, redis_server_address
from app.settings import Settings
from tests.replication import SENTINEL_MASTER, SentinelRedis

pytestmark = pytest.mark.drill


def test_a_coordinated_failover_moves_writes_to_the_new_master_within_a_second() -> None:
    group = SentinelRedis().start()
    try:
        settings = Settings.from_env({"REDIS_SENTINELS": group.sentinel_setting,
                                      "REDIS_SENTINEL_MASTER": SENTINEL_MASTER, "REDIS_URL": "redis://127.0.0.1:1/0"})
        client = redis_client(settings.redis_url, sentinel=settings.redis_sentinel)
        client.set("before", "1")
        old = group.master_address()
        Redis(port=group.ports["sentinel0"]).execute_command("SENTINEL", "FAILOVER", SENTINEL_MASTER)
        started = time.monotonic()
        while group.master_address() == old:
            assert time.monotonic() - started < 30, "Sentinel did not switch the master"
            time.sleep(0.02)
        switched = time.monotonic()
        written: list[tuple[str, float]] = []
        demoted = None
        while time.monotonic() - switched < 14:
            key = f"job{len(written)}"
            try:
                client.rpush("jobs", key)
                written.append((key, time.monotonic() - switched))
            except Exception:  # noqa: BLE001 - a write refused during the switch is not acknowledged: not lost
                pass
            if demoted is None and Redis(port=old[1]).execute_command("ROLE")[0] != b"master":
                demoted = time.monotonic() - switched
            time.sleep(0.2)
        assert demoted is not None, "the old master was never demoted: the case this test is about did not happen"
        time.sleep(2)
        kept = {item.decode() for item in Redis(port=group.master_address()[1]).lrange("jobs", 0, -1)}
        lost = [(key, round(at, 2)) for key, at in written if key not in kept]
        # Only writes within a check interval (plus the loop's own step) of the switch may have reached the old master.
        assert all(at <= MASTER_CHECK_SECONDS + 0.5 for _, at in lost), (lost, demoted)
        assert redis_server_address(client) == f"{group.master_address()[0]}:{group.master_address()[1]}"
        print(f"old master demoted {demoted:.1f} s after the switch; lost {len(lost)} of {len(written)} writes: {lost}")
    finally:
        group.stop()


def test_the_async_client_follows_the_switch_too() -> None:
    import asyncio

    group = SentinelRedis().start()
    try:
        settings = Settings.from_env({"REDIS_SENTINELS": group.sentinel_setting,
                                      "REDIS_SENTINEL_MASTER": SENTINEL_MASTER, "REDIS_URL": "redis://127.0.0.1:1/0"})

        async def scenario() -> tuple[str, str]:
            client = async_redis_client(settings.redis_url, sentinel=settings.redis_sentinel)
            await client.set("before", "1")
            old = group.master_address()
            Redis(port=group.ports["sentinel0"]).execute_command("SENTINEL", "FAILOVER", SENTINEL_MASTER)
            started = time.monotonic()
            while group.master_address() == old:
                assert time.monotonic() - started < 30, "Sentinel did not switch the master"
                await asyncio.sleep(0.02)
            await asyncio.sleep(MASTER_CHECK_SECONDS + 0.2)
            await client.set("after", "2")  # taken after the check interval: on the new master
            await client.aclose()
            return "after", str(group.master_address()[1])

        key, port = asyncio.run(scenario())
        assert Redis(port=int(port)).get(key) == b"2"
    finally:
        group.stop()


def test_a_pub_sub_listener_resubscribes_on_the_new_master_after_the_master_is_killed() -> None:
    """RQ's worker hears its commands (shutdown, stop a job) on a pub/sub listener, which reads on after each
    error. When the master is SIGKILLed, the listener's reconnects fail while the sentinels still name the dead
    master; once they name the new one, the next read (a health-check PING first, the check being overdue)
    reconnects to it, resubscribes and hears a message published there. redis-py's own Sentinel connection
    sent that PING to the address it had, the dead master's, for ever."""
    group = SentinelRedis().start()
    try:
        settings = Settings.from_env({"REDIS_SENTINELS": group.sentinel_setting,
                                      "REDIS_SENTINEL_MASTER": SENTINEL_MASTER, "REDIS_URL": "redis://127.0.0.1:1/0"})
        # RQ's listener: no read timeout, the health check every process's clients have (here 1 s, not 10 s).
        client = redis_client(settings.redis_url, socket_timeout=None, health_check_seconds=1,
                              sentinel=settings.redis_sentinel)
        listener = client.pubsub(ignore_subscribe_messages=True)
        listener.subscribe("rq:pubsub:drill-worker")
        assert listener.get_message(timeout=1) is None
        old = group.master_address()
        group.kill_master()
        started = time.monotonic()
        errors: list[tuple[float, str]] = []
        heard = None
        promoted_at = None
        while heard is None and time.monotonic() - started < 40:
            try:
                heard = listener.get_message(timeout=0.5)
            except (RedisConnectionError, RedisTimeoutError) as exc:  # RQ's listener sleeps and reads again
                errors.append((time.monotonic(), str(exc)))
                time.sleep(0.5)
            master = group.master_address()
            if master != old:
                promoted_at = promoted_at or time.monotonic()
                Redis(host=master[0], port=master[1]).publish("rq:pubsub:drill-worker", "shutdown")
        assert promoted_at is not None, "Sentinel did not promote the replica"
        assert heard is not None and heard["data"] == b"shutdown", errors[-3:]
        # Once the sentinels named the new master, the dead address was tried at most by a read already begun.
        late = [error for at, error in errors if at > promoted_at + 1 and f":{old[1]}" in error]
        assert not late, late
        listener.close()
        client.close()
    finally:
        group.stop()
