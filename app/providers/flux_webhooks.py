"""FLUX completion webhooks: the signature both sides compute, and the Redis wake-up from API to worker.

With ``FLUX_WEBHOOKS=true`` the worker submits each task with ``webhook_url`` (the API's
:data:`WEBHOOK_PATH` under ``POSEGEN_PUBLIC_BASE_URL``) and ``webhook_secret``. When the task ends,
FLUX POSTs a JSON body naming the task (``task_id``, or ``id``) and its ``status``. The signature
format we implement (and the fake FLUX sends):

- ``X-Webhook-Timestamp``: Unix seconds when the body was signed;
- ``X-Webhook-Signature``: ``sha256=`` + hex HMAC-SHA256 over ``"<timestamp>." + raw body``, keyed
  with the secret.

A timestamp outside :data:`REPLAY_WINDOW_SECONDS` of our clock is refused, so a captured delivery
cannot be replayed later. Whichever API replica receives a verified delivery pushes the status onto a
Redis list keyed by the task id (:func:`wake_task`); the worker waiting on that task pops it
(:meth:`TaskWakeups.wait`, BLPOP) and re-reads the task from its polling URL. The list outlives a
delivery that arrives before the worker starts waiting, and a duplicate only leaves a spare entry
that expires.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from app import API_PREFIX
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
# Long enough for a worker that is between two polls; a duplicate's spare entry goes away by itself.
_WAKE_TTL_SECONDS = 600


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


def wake_task(redis: Redis, task_id: str, status: str) -> None:
    """Record a verified delivery for the worker waiting on ``task_id`` (any API replica may call it);
    raises RedisError when Redis is unreachable (the sender retries, and polling catches it anyway)."""
    with redis.pipeline(transaction=True) as pipe:
        pipe.rpush(_key(task_id), status)
        pipe.expire(_key(task_id), _WAKE_TTL_SECONDS)
        pipe.execute()


class TaskWakeups:
    """The worker side: wait for a task's webhook, at most ``timeout`` seconds at a time."""

    def __init__(self, redis: AsyncRedis) -> None:
        self._redis = redis

    async def wait(self, task_id: str, timeout: float) -> bool:
        """True when a delivery for ``task_id`` arrived (now or before), False after ``timeout`` seconds.
        A Redis outage counts as no delivery after the same wait: the caller polls, as it would anyway."""
        try:
            return await self._redis.blpop([_key(task_id)], timeout=timeout) is not None
        except RedisError:
            await asyncio.sleep(timeout)
            return False
