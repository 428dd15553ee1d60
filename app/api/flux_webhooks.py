"""``POST /webhooks/flux``: FLUX says a task ended; wake the worker waiting for it.

No JWT: the caller is FLUX, proven by the HMAC signature over the raw body (see
:mod:`app.providers.flux_webhooks` for the format). A delivery that is unsigned, wrongly signed or
outside the replay window is 401 and changes nothing; a body over the size limit is 413 before it is
read in full. A verified delivery is taken once (a replay inside the window answers 200 and changes
nothing). It only wakes the worker, which reads the task's state from FLUX's
polling URL itself: nothing a webhook says completes a pose on its own. Registered only when
``FLUX_WEBHOOKS=true``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from litestar import Request, post
from litestar.exceptions import ClientException, NotAuthorizedException, ServiceUnavailableException
from litestar.status_codes import HTTP_200_OK
from redis.exceptions import RedisError

from app.api.openapi import error_responses
from app.api.state import api_state
from app.observability.logging import get_logger
from app.providers.flux_webhooks import (
    MAX_TASK_ID_CHARS,
    MAX_WEBHOOK_BYTES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WEBHOOK_PATH,
    WebhookRejected,
    verify,
    wake_task,
)

log = get_logger("API")


@post(WEBHOOK_PATH, summary="FLUX task-finished webhook (HMAC-signed)", tags=["webhooks"], status_code=HTTP_200_OK,
      request_max_body_size=MAX_WEBHOOK_BYTES, responses=error_responses(401, 422, 503))
async def flux_webhook(request: Request[Any, Any, Any]) -> dict[str, Any]:
    body = await request.body()
    try:
        verify(api_state(request).flux_webhook_secret, request.headers.get(TIMESTAMP_HEADER),
               request.headers.get(SIGNATURE_HEADER), body)
    except WebhookRejected as exc:
        log.warning("FLUX webhook refused", reason=str(exc))
        raise NotAuthorizedException(f"FLUX webhook refused: {exc}") from None
    task_id, status = _task_and_status(body)
    try:
        # Verified above, so the signature names this delivery: the same delivery again changes nothing.
        taken = await asyncio.to_thread(wake_task, api_state(request).redis, task_id, status,
                                        request.headers.get(SIGNATURE_HEADER, ""))
    except RedisError:
        # FLUX retries a failed delivery; the worker's polling catches the task meanwhile anyway.
        raise ServiceUnavailableException("the queue is unavailable; retry later") from None
    log.debug("FLUX webhook received", taskId=task_id, status=status, duplicate=not taken)
    return {"received": True, "taskId": task_id, "duplicate": not taken}


def _task_and_status(body: bytes) -> tuple[str, str]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise ClientException("FLUX webhook body is not JSON", status_code=422) from None
    if not isinstance(payload, dict):
        raise ClientException("FLUX webhook body is not a JSON object", status_code=422)
    task_id = payload.get("task_id") or payload.get("id")
    if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_TASK_ID_CHARS:
        raise ClientException(f"FLUX webhook has no task_id of 1..{MAX_TASK_ID_CHARS} characters",
                              status_code=422)
    status = payload.get("status")
    return task_id, status if isinstance(status, str) else ""
