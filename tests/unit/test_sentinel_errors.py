"""With every sentinel unreachable, a command fails with a ``MasterNotFoundError`` an operator can read: each
sentinel by its address and why it failed, not a kilobyte of connection options apiece (in-process: the
sentinels are ports nothing listens on)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from app.connections import async_redis_client, redis_client
from app.settings import Settings


@pytest.fixture
def settings() -> Iterator[Settings]:
    """Sentinel settings naming three bound ports that do not listen: each connection is refused at once."""
    ports = [socket.socket() for _ in range(3)]
    for port in ports:
        port.bind(("127.0.0.1", 0))
    try:
        yield Settings.from_env({
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port.getsockname()[1]}" for port in ports),
            "REDIS_SENTINEL_MASTER": "posegen", "REDIS_URL": "redis://127.0.0.1:1/0"})
    finally:
        for port in ports:
            port.close()


def _readable(message: str, settings: Settings) -> None:
    assert settings.redis_sentinel is not None
    assert len(message) < 150 * len(settings.redis_sentinel.sentinels), message
    for host, port in settings.redis_sentinel.sentinels:
        assert f"sentinel {host}:{port} - network:ConnectionError: Error 111 connecting to {host}:{port}" in message, \
            message


def test_the_clients_error_names_each_sentinel_and_its_failure(settings: Settings) -> None:
    with pytest.raises(RedisConnectionError) as caught:
        redis_client(settings.redis_url, retries=0, sentinel=settings.redis_sentinel).ping()
    assert type(caught.value).__name__ == "MasterNotFoundError"
    _readable(str(caught.value), settings)


def test_the_async_clients_error_too(settings: Settings) -> None:
    async def ping() -> None:
        client = async_redis_client(settings.redis_url, sentinel=settings.redis_sentinel)
        try:
            await client.ping()
        finally:
            await client.aclose()

    with pytest.raises(RedisConnectionError) as caught:
        asyncio.run(ping())
    assert type(caught.value).__name__ == "MasterNotFoundError"
    _readable(str(caught.value), settings)
