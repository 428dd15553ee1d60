"""The ``flux`` provider: the Black Forest Labs FLUX API over httpx.

Submit ``POST {base}/v1/{model}`` with the prompt and the ControlNet image, poll the returned
``polling_url`` until the task is ``Ready``, then download ``result.sample``. With webhooks on
(:mod:`app.providers.flux_webhooks`), the submission also names our webhook URL and secret, and the
provider waits for the API to pass the webhook on, polling only every
``FLUX_WEBHOOK_POLL_INTERVAL_SECONDS`` as the fallback. A wake-up is only a hint: the task's state is
always read from its polling URL, so a lost webhook delays a pose and a forged one completes nothing.

Every HTTP call has its own timeout and is retried on 429, 5xx and transport errors with exponential
backoff and full jitter; the whole pose has one deadline. Failures leave as the seed's error types (:mod:`app.errors`).

FLUX's answers are untrusted (:mod:`app.providers.flux_hosts`, :mod:`app.upstream`): the key goes only to
trusted API origins and no redirect is ever followed; samples come only from allowed delivery hosts; every
body is read with a cap (``FLUX_MAX_JSON_BYTES``, ``FLUX_MAX_IMAGE_BYTES``); a sample must be a PNG or JPEG
within ``FLUX_MAX_IMAGE_PIXELS`` that decodes; what an answer puts into a message is a short, clean excerpt.
Each refusal is a ``FLUX_API_ERROR`` (the pose is refunded, as always).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from typing import Any

import httpx

from app.connections import http_client
from app.errors import FluxApiError, PoseGenerationError, ProviderNetworkError, ProviderTimeoutError
from app.observability.logging import get_logger
from app.providers.base import ImageRequest, TaskDone
from app.providers.call_metrics import ProviderCallMetrics
from app.providers.flux_hosts import TrustedHosts, UntrustedUrl
from app.providers.flux_webhooks import MAX_TASK_ID_CHARS, TaskWakeups, webhook_secret, webhook_url
from app.providers.image_check import ImageRefused, check_image
from app.providers.task_durations import TaskDurations
from app.settings import Settings
from app.upstream import IDENTITY_ENCODING, AnswerTooLarge, EncodedAnswer, excerpt, origin_of, read_capped, read_excerpt

log = get_logger("FLUX")

_PENDING = frozenset({"Pending", "Queued", "Processing"})
_MODERATED = frozenset({"Request Moderated", "Content Moderated"})
_FAILED = frozenset({"Error", "Failed"})
_BACKOFF_BASE_SECONDS = 0.25
_BACKOFF_CAP_SECONDS = 10.0


def poll_delay(elapsed: float, expected: float | None, interval: float) -> float:
    """How long to wait before the next poll of a task submitted ``elapsed`` seconds ago.

    The fixed ``interval``, except around the moment tasks lately finish (``expected``): from 90 % of
    it until one interval past it, polls come four times as often, so a finished task frees its
    provider slot sooner. Never slower than the fixed interval; a task much later than expected is
    polled at the fixed interval again.
    """
    if expected is None:
        return interval
    fine_from, fine_until = 0.9 * expected, expected + interval
    if elapsed < fine_from:
        return min(interval, fine_from - elapsed)
    if elapsed < fine_until:
        return interval / 4
    return interval


class FluxProvider:
    """Generates one pose image per :meth:`generate` call through the FLUX API."""

    name = "flux"

    def __init__(
        self, settings: Settings, *, client: httpx.AsyncClient | None = None, durations: TaskDurations | None = None,
        call_metrics: ProviderCallMetrics | None = None, wakeups: TaskWakeups | None = None,
    ) -> None:
        """``wakeups``: wait for FLUX's webhook (passed on by the API) between slow polls instead of polling."""
        self._settings = settings
        self._durations = durations
        self._call_metrics = call_metrics
        self._wakeups = wakeups
        self._webhook = (
            {"webhook_url": webhook_url(settings), "webhook_secret": webhook_secret(settings)}
            if wakeups is not None else {}
        )
        # A trailing slash so relative paths (the model, a relative polling_url) join below any base path.
        self._base = httpx.URL(settings.flux_base_url.rstrip("/") + "/")
        self._api_hosts = TrustedHosts(self._base, settings.flux_api_hosts, "FLUX_API_HOSTS")
        self._delivery_hosts = TrustedHosts(self._base, settings.flux_delivery_hosts, "FLUX_DELIVERY_HOSTS")
        self._timeout = httpx.Timeout(settings.flux_timeout_seconds)
        self._owns_client = client is None
        self._client = client if client is not None else http_client(self._timeout)

    async def generate(self, request: ImageRequest, task_done: TaskDone | None = None) -> bytes:
        """Return the image bytes; raise FluxApiError, ProviderTimeoutError or ProviderNetworkError.

        ``task_done`` is awaited as soon as FLUX reports the task Ready (it no longer counts against the
        account's concurrent tasks), before the sample is downloaded from the delivery host."""
        budget = self._settings.flux_deadline_seconds
        meta = {"generationId": request.generation_id, "poseId": request.pose_id}
        deadline = asyncio.get_running_loop().time() + budget
        try:
            async with asyncio.timeout_at(deadline):
                return await self._generate(request, deadline, meta, task_done)
        except TimeoutError:
            raise ProviderTimeoutError(f"FLUX did not deliver the image within {budget:g}s") from None

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
        if self._wakeups is not None:
            await self._wakeups.aclose()

    async def _generate(self, request: ImageRequest, deadline: float, meta: dict[str, str],
                        task_done: TaskDone | None) -> bytes:
        model = self._settings.flux_model
        log.info("Calling FLUX API", model=model, width=request.width, height=request.height, **meta)
        payload = {
            "prompt": request.prompt,
            "control_image": base64.b64encode(request.control_image).decode("ascii"),
            "width": request.width,
            "height": request.height,
            "seed": request.seed,
            "output_format": "png",
            **self._webhook,
        }
        submitted_at = asyncio.get_running_loop().time()
        submitted = _json_object(
            await self._call("POST", self._base.join(f"v1/{model}"), "submit", deadline, meta, json=payload), "submit"
        )
        raw_id = submitted.get("id")
        # Only an id a webhook could name (the API takes 1..128 characters) is waited on; any other is polled.
        task_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_TASK_ID_CHARS else ""
        shown_id = excerpt(raw_id, 64) or "(no id)"
        polling_url = await self._trusted(self._api_hosts, submitted.get("polling_url"), "FLUX polling_url")
        log.debug("FLUX task submitted", taskId=shown_id, **meta)
        sample_url = await self._poll(polling_url, task_id, shown_id, deadline, meta, submitted_at)
        sample_url = await self._trusted(self._delivery_hosts, sample_url, f"FLUX sample of task {shown_id}")
        if task_done is not None:
            await task_done()
        # The sample is a signed delivery URL on another host: the key is not sent there.
        image = await self._call("GET", sample_url, "download", deadline, meta, auth=False,
                                 limit=self._settings.flux_max_image_bytes)
        try:
            image_format = await asyncio.to_thread(check_image, image, self._settings.flux_max_image_pixels)
        except ImageRefused as exc:
            raise FluxApiError(f"FLUX sample of task {shown_id} refused: it {exc}") from None
        log.info("FLUX image ready", taskId=shown_id, bytes=len(image), format=image_format, **meta)
        return image

    async def _trusted(self, hosts: TrustedHosts, value: Any, what: str) -> httpx.URL:
        """``value`` (a URL FLUX answered, maybe relative to the base) once ``hosts`` allow calling it."""
        if not isinstance(value, str) or not value:
            raise FluxApiError(f"{what} is missing from FLUX's answer")
        try:
            url = self._base.join(value)
        except httpx.InvalidURL:
            raise FluxApiError(f"{what} is not a URL: {excerpt(value, 60)}") from None
        try:
            await hosts.check(url, what)
        except UntrustedUrl as exc:
            raise FluxApiError(str(exc)) from None
        return url

    async def _poll(
        self, url: httpx.URL, task_id: str, shown_id: str, deadline: float, meta: dict[str, str], submitted_at: float
    ) -> Any:
        """Poll until the task is Ready and return its ``result.sample`` as answered; other end states are
        FluxApiError."""
        loop = asyncio.get_running_loop()
        # Without a task id no webhook can be matched to this task: poll it as without webhooks.
        wakeups = self._wakeups if task_id else None
        expected = await self._durations.expected() if self._durations is not None and wakeups is None else None
        while True:
            if wakeups is not None:
                # Returns as soon as the webhook is in (or was already); else polls at the slow pace.
                await wakeups.wait(task_id, self._settings.flux_webhook_poll_interval_seconds)
            body = _json_object(await self._call("GET", url, "poll", deadline, meta), "poll")
            status = body.get("status")
            if status == "Ready":
                result = body.get("result")
                sample = result.get("sample") if isinstance(result, dict) else None
                if not isinstance(sample, str) or not sample:
                    raise FluxApiError(f"FLUX task {shown_id} is Ready without result.sample")
                if self._durations is not None:
                    await self._durations.observe(loop.time() - submitted_at)
                if self._call_metrics is not None:
                    await self._call_metrics.task_finished(loop.time() - submitted_at, meta["generationId"])
                return sample
            if status in _PENDING:
                if wakeups is None:
                    await asyncio.sleep(
                        poll_delay(loop.time() - submitted_at, expected, self._settings.flux_poll_interval_seconds)
                    )
                continue
            details = f": {excerpt(body['details'])}" if body.get("details") else ""
            if status in _MODERATED:
                raise FluxApiError(f"FLUX moderated task {shown_id} ({status}){details}")
            if status in _FAILED:
                raise FluxApiError(f"FLUX task {shown_id} failed with status {status}{details}")
            if status == "Task not found":
                raise FluxApiError(f"FLUX does not know task {shown_id} (Task not found)")
            # An unknown state fails now rather than being polled into a misleading timeout.
            raise FluxApiError(f"FLUX task {shown_id} answered unexpected status {excerpt(status, 60)}")

    async def _call(
        self, method: str, url: httpx.URL, step: str, deadline: float, meta: dict[str, str],
        *, json: dict[str, Any] | None = None, auth: bool = True, limit: int | None = None,
    ) -> bytes:
        """One HTTP call with retries; answers the body of the successful response (at most ``limit`` bytes,
        ``FLUX_MAX_JSON_BYTES`` unless given) or raises the seed's error type. Redirects are never followed: a
        call carrying the key must not carry it to wherever a 3xx points."""
        headers = {**IDENTITY_ENCODING, **({"x-key": self._settings.flux_api_key} if auth else {})}
        limit = self._settings.flux_max_json_bytes if limit is None else limit
        retries = self._settings.flux_max_retries
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            reason = "network"
            try:
                async with self._client.stream(method, url, json=json, headers=headers, timeout=self._timeout,
                                               follow_redirects=False) as response:
                    status = response.status_code
                    if 200 <= status < 300:
                        return await self._body(response, step, limit)
                    if status < 400:
                        raise FluxApiError(f"FLUX {step} answered HTTP {status}, a redirect to "
                                           f"{_location(url, response)}; not followed (FLUX's calls never follow "
                                           "redirects)")
                    detail = await read_excerpt(response)
            except httpx.TimeoutException as exc:
                reason = "timeout"
                error: PoseGenerationError = ProviderTimeoutError(
                    f"FLUX {step} timed out ({type(exc).__name__}, attempt {attempt} of {retries + 1})"
                )
            except httpx.TransportError as exc:
                error = ProviderNetworkError(
                    f"FLUX {step} to {origin_of(url)} failed ({type(exc).__name__}: {excerpt(str(exc))}; "
                    f"attempt {attempt} of {retries + 1})"
                )
            else:
                if status != 429 and status < 500:
                    raise FluxApiError(f"FLUX {step} answered HTTP {status}: {detail}")
                error = FluxApiError(f"FLUX {step} answered HTTP {status} (attempt {attempt} of {retries + 1}): "
                                     f"{detail}")
                reason = "server_error"
                if status == 429:
                    retry_after = _retry_after(response)
                    reason = "rate_limited"
                    if self._call_metrics is not None:
                        await self._call_metrics.rate_limited(step)
            if attempt > retries:
                raise error
            if retry_after is not None:
                # Jitter on top of the server's hint so callers rejected together do not return together.
                delay = retry_after + random.uniform(0, _BACKOFF_BASE_SECONDS)
            else:
                delay = random.uniform(0, min(_BACKOFF_CAP_SECONDS, _BACKOFF_BASE_SECONDS * 2 ** attempt / 2))
            if asyncio.get_running_loop().time() + delay >= deadline:
                raise error  # waiting would outlive the deadline: fail now, with the real cause
            if self._call_metrics is not None:
                await self._call_metrics.retried(reason)
            log.warning("FLUX call failed, retrying", step=step, attempt=attempt, error=str(error),
                        retryInSeconds=round(delay, 3), **meta)
            await asyncio.sleep(delay)

    @staticmethod
    async def _body(response: httpx.Response, step: str, limit: int) -> bytes:
        try:
            return await read_capped(response, limit)
        except (AnswerTooLarge, EncodedAnswer) as exc:
            raise FluxApiError(f"FLUX {step} answer refused: {exc}") from None


def _json_object(body: bytes, step: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        raise FluxApiError(f"FLUX {step} answered a body that is not JSON: {excerpt(body)}") from None
    if not isinstance(value, dict):
        raise FluxApiError(f"FLUX {step} answered JSON that is not an object: {excerpt(value)}")
    return value


def _location(url: httpx.URL, response: httpx.Response) -> str:
    """The origin a redirect points at, for the message."""
    try:
        return origin_of(url.join(response.headers.get("location", "")))
    except httpx.InvalidURL:
        return "an unreadable location"


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds; the HTTP-date form is rare here and falls back to our backoff."""
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
