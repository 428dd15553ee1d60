"""FLUX completion webhooks: the signature both sides compute, and the Redis wake-up from API to worker.

With ``FLUX_WEBHOOKS=true`` the worker submits each task with ``webhook_url`` (the API's
:data:`WEBHOOK_PATH` under ``POSEGEN_PUBLIC_BASE_URL``) and ``webhook_secret``. When the task ends,
FLUX POSTs a JSON body naming the task (``task_id``, or ``id``) and its ``status``. The signature
format we implement (and the fake FLUX sends):

- ``X-Webhook-Timestamp``: Unix seconds when the body was signed;
- ``X-Webhook-Signature``: ``sha256=`` + hex HMAC-SHA256 over ``"<timestamp>." + raw body``, keyed
  with the secret.

A timestamp outside :data:`REPLAY_WINDOW_SECONDS` of our clock is refused, so a captured delivery
cannot be replayed later; within the window, a delivery is taken once (:func:`wake_task` marks its
signature as seen for longer than the window can accept it), so replaying it changes nothing. Whichever API
replica receives a verified delivery pushes the status onto a Redis list keyed by the task id, trimmed to
:data:`MAX_WAKEUPS_PER_TASK` entries; the worker waiting on that task pops it (:meth:`TaskWakeups.wait`,
BLPOP) and re-reads the task from its polling URL. The list outlives a delivery that arrives before the
worker starts waiting, and expires by itself.

The worker's BLPOP runs on a client of its own whose socket timeout is longer than the block (redis-py
#2807: a blocking command whose block reaches the socket timeout fails instead of returning empty), so a
wait ends on time with "nothing yet", and a webhook arriving at any moment of the next wait wakes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import TYPE_CHECKING

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app import API_PREFIX
from app.connections import async_redis_client
from app.settings import Settings

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

WEBHOOK_PATH = "/webhooks/flux"
TIMESTAMP_HEADER = "x-webhook-timestamp"
SIGNATURE_HEADER = "x-webhook-signature"
REPLAY_WINDOW_SECONDS = 300
# A completion notice is a few hundred bytes (id, status, sample URL, prompt echo).
MAX_WEBHOOK_BYTES = 16 * 1024
MAX_TASK_ID_CHARS = 128
_WAKE_KEY = "posegen:flux-webhook:"
_SEEN_KEY = "posegen:flux-webhook-seen:"
# Long enough for a worker that is between two polls; a spare entry goes away by itself.
_WAKE_TTL_SECONDS = 600
# A worker needs one wake-up per task: distinct deliveries of the same task (FLUX retrying a delivery whose
# answer it missed) keep the latest only.
MAX_WAKEUPS_PER_TASK = 1
# A delivery's timestamp may lie up to the window ahead of our clock and still be taken up to the window
# after it: its signature is remembered that long, so no replay inside the window is taken again.
_SEEN_TTL_SECONDS = 2 * REPLAY_WINDOW_SECONDS + 60
# Beyond the block of a BLPOP, how long its reply may take before the wake-up client gives up on Redis.
WAKE_READ_MARGIN_SECONDS = 2.0

# KEYS: the task's wake-up list, the delivery's seen-marker. ARGV: status, list TTL, marker TTL, most entries.
_WAKE = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[3])) then
    return 0
end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


class WebhookRejected(ValueError):
    """A delivery that is not provably from FLUX (missing, stale or wrong signature)."""


def webhook_url(settings: Settings) -> str:
    return f"{settings.public_base_url}{API_PREFIX}{WEBHOOK_PATH}"


def webhook_secret(settings: Settings) -> str:
    """``FLUX_WEBHOOK_SECRET``, else one derived from ``JWT_SECRET``: stable per deployment, shared by every
    process without more configuration, and revealing nothing of the JWT secret to FLUX."""
    if settings.flux_webhook_secret:
        return settings.flux_webhook_secret
    return hmac.new(settings.jwt_secret.encode(), b"posegen flux webhook secret", hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Webhook-Signature`` value for ``body`` signed at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str | None, signature: str | None, body: bytes,
           now: float | None = None) -> None:
    """Return when ``signature`` signs ``body`` at ``timestamp`` within the replay window; else raise
    :class:`WebhookRejected` naming what is wrong. The comparison takes constant time."""
    if not timestamp or not signature:
        raise WebhookRejected(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    try:
        signed_at = int(timestamp)
    except ValueError:
        raise WebhookRejected(f"{TIMESTAMP_HEADER} is not Unix seconds") from None
    if abs((time.time() if now is None else now) - signed_at) > REPLAY_WINDOW_SECONDS:
        raise WebhookRejected(f"{TIMESTAMP_HEADER} is outside the {REPLAY_WINDOW_SECONDS} s replay window")
    if not hmac.compare_digest(sign(secret, signed_at, body).encode(), signature.encode()):
        raise WebhookRejected("signature does not match the body")


def _key(task_id: str) -> str:
    return _WAKE_KEY + task_id


def wake_task(redis: Redis, task_id: str, status: str, delivery: str) -> bool:
    """Record a verified delivery for the worker waiting on ``task_id`` (any API replica may call it), once:
    ``delivery`` identifies it (its signature), and the same delivery again changes nothing and answers False.
    Raises RedisError when Redis is unreachable (the sender retries, and polling catches it anyway)."""
    marker = _SEEN_KEY + hashlib.sha256(delivery.encode()).hexdigest()
    taken = redis.register_script(_WAKE)(
        keys=[_key(task_id), marker], args=[status, _WAKE_TTL_SECONDS, _SEEN_TTL_SECONDS, MAX_WAKEUPS_PER_TASK])
    return bool(taken)


class TaskWakeups:
    """The worker side: wait for a task's webhook, at most ``timeout`` seconds at a time, on a Redis client of
    its own whose reads outlast the longest block (:meth:`for_settings`)."""

    def __init__(self, redis: AsyncRedis) -> None:
        self._redis = redis

    @classmethod
    def for_settings(cls, settings: Settings) -> TaskWakeups:
        """Wake-ups on ``REDIS_URL`` for waits of ``FLUX_WEBHOOK_POLL_INTERVAL_SECONDS``: a read times out only
        :data:`WAKE_READ_MARGIN_SECONDS` after a block ends, and is not retried (a silent Redis costs one
        interval, after which the worker polls)."""
        read_timeout = settings.flux_webhook_poll_interval_seconds + WAKE_READ_MARGIN_SECONDS
        return cls(async_redis_client(settings.redis_url, socket_timeout=read_timeout, retry=Retry(NoBackoff(), 0),
                                      sentinel=settings.redis_sentinel))

    async def wait(self, task_id: str, timeout: float) -> bool:
        """True when a delivery for ``task_id`` arrived (now or before), False after ``timeout`` seconds.
        A Redis outage counts as no delivery once the wait is over (an error sooner is waited out to ``timeout``,
        never beyond; a silent Redis costs at most :data:`WAKE_READ_MARGIN_SECONDS` more): the caller polls, as it
        would anyway."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            return await self._redis.blpop([_key(task_id)], timeout=timeout) is not None
        except RedisError:
            await asyncio.sleep(max(0.0, timeout - (loop.time() - began)))
            return False

    async def aclose(self) -> None:
        await self._redis.aclose()
