"""``supabase`` storage: objects uploaded to a Supabase Storage bucket over its REST API.

Uploads are ``POST {url}/storage/v1/object/{bucket}/{key}`` with ``x-upsert: true``,
so retrying an upload whose answer was lost (a timeout, a 5xx) is harmless. Clients
fetch images from the bucket's public URL; the bucket must exist and be public.

Supabase's answers are untrusted input (:mod:`app.upstream`): a success names the object in a few dozen bytes
and an error is a small JSON object, so an answer is read only up to :data:`MAX_ANSWER_BYTES` (a longer one
fails the upload) and only a short, clean excerpt of an error is logged. Redirects are not followed: the
request carries the service key.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import httpx

from app.connections import http_client
from app.errors import StorageError
from app.observability.logging import get_logger
from app.observability.performance import performance_tracker
from app.storage.base import check_storage_key
from app.upstream import IDENTITY_ENCODING, AnswerTooLarge, EncodedAnswer, excerpt, read_capped

# One label value per HTTP attempt, so retries show in the histogram. The pipeline
# already measures the whole upload as ``image_upload``; measuring it here too would count it twice.
SUPABASE_REQUEST = "supabase_request"
# Answers worth another try: the service is overloaded or briefly broken.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# The most of an answer read: ``{"Key": ..., "Id": ...}`` or ``{"statusCode", "error", "message"}`` is far less.
MAX_ANSWER_BYTES = 64 * 1024

log = get_logger("Storage")


class SupabaseStorage:
    name = "supabase"

    def __init__(
        self,
        url: str,
        service_key: str,
        bucket: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        max_retries: int = 2,
        backoff_seconds: float = 0.2,
    ) -> None:
        """``url`` is the project URL (``https://<ref>.supabase.co``); a given ``client`` is left open."""
        self._url = url.rstrip("/")
        self._service_key = service_key
        self._bucket = bucket
        self._timeout = httpx.Timeout(timeout)
        self._max_retries = max_retries
        self._backoff_seconds = backoff_seconds
        self._owns_client = client is None
        self._client = client if client is not None else http_client(self._timeout)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Upload ``data`` to ``key``, retrying 429/5xx and transport errors; raise :class:`StorageError`."""
        target = f"{self._url}/storage/v1/object/{quote(self._bucket)}/{_quoted_key(key)}"
        headers = {
            "Authorization": f"Bearer {self._service_key}",
            "apikey": self._service_key,
            "Content-Type": content_type,
            "x-upsert": "true",
            **IDENTITY_ENCODING,
        }
        attempts = self._max_retries + 1
        for attempt in range(1, attempts + 1):
            status: int | None = None
            failure: httpx.TransportError | None = None
            try:
                async with performance_tracker.measure(SUPABASE_REQUEST, key=key, attempt=attempt), \
                        self._client.stream("POST", target, content=data, headers=headers, timeout=self._timeout,
                                            follow_redirects=False) as response:
                    status = response.status_code
                    answer = await _read_answer(response)
                if response.is_success:
                    log.debug("Image uploaded", key=key, status=status, attempt=attempt, bytes=len(data))
                    return
                cause = f"HTTP {status} {excerpt(response.reason_phrase, 60)}".rstrip()
                retryable = status in RETRYABLE_STATUSES
                detail = _error_detail(answer)
            except httpx.TransportError as exc:
                failure = exc
                cause = _describe_transport_error(exc, self._timeout)
                retryable = True
                detail = ""
            if not retryable or attempt == attempts:
                log.error("Failed to upload image", key=key, status=status, attempt=attempt, cause=cause,
                          detail=detail)
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise StorageError(f"Supabase upload failed: {cause}{tries}") from failure
            log.warning("Retrying image upload", key=key, status=status, attempt=attempt, cause=cause)
            await asyncio.sleep(self._backoff_seconds * 2 ** (attempt - 1))

    def public_url(self, key: str) -> str:
        return f"{self._url}/storage/v1/object/public/{quote(self._bucket)}/{_quoted_key(key)}"

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def _quoted_key(key: str) -> str:
    check_storage_key(key)
    return quote(key, safe="/")


async def _read_answer(response: httpx.Response) -> bytes:
    """The answer's body, at most :data:`MAX_ANSWER_BYTES`; a longer or compressed one fails the upload (it is not
    an answer Supabase Storage gives, whatever its status)."""
    try:
        return await read_capped(response, MAX_ANSWER_BYTES)
    except (AnswerTooLarge, EncodedAnswer) as exc:
        log.error("Refused Supabase's answer", status=response.status_code, reason=str(exc))
        raise StorageError(f"Supabase upload failed: HTTP {response.status_code} answer refused: {exc}") from None


def _error_detail(answer: bytes) -> str:
    """Supabase's own reason (``{"error": ..., "message": ...}``) for the log, as a short excerpt."""
    try:
        body = json.loads(answer)
    except ValueError:
        return excerpt(answer)
    if isinstance(body, dict):
        return excerpt(body.get("message") or body.get("error") or body)
    return excerpt(body)


def _describe_transport_error(exc: httpx.TransportError, timeout: httpx.Timeout) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"{type(exc).__name__} (no answer within {timeout.read} s)"
    reason = str(exc)
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
