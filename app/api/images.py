"""Serves images kept by the ``local`` storage backend to holders of a signed, expiring URL.

The ``imageUrl`` of a generation's pose carries ``expires`` and ``signature`` (see
:mod:`app.storage.signed_urls`): such a URL can be put in an ``<img>`` tag, which sends no
Authorization header, yet it stops working after ``POSEGEN_IMAGE_URL_TTL_SECONDS``, and a key alone
(unsigned, tampered with or expired) gets 403. Polling the generation again gives a fresh URL.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Request, get
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import FromPath, Parameter
from litestar.response import File

from app.api.openapi import error_responses
from app.api.state import api_state
from app.errors import StorageError
from app.storage.local import LocalStorage
from app.storage.signed_urls import ImageUrlRefused


@get("/images/{key:path}", summary="A generated image (local storage), by its signed URL", tags=["images"],
     media_type="image/png", responses=error_responses(403, 404, 406))
async def image(
    request: Request, key: FromPath[str],
    expires: Annotated[str | None, Parameter(description="Unix time the URL expires (from imageUrl)")] = None,
    signature: Annotated[str | None, Parameter(description="HMAC of key and expiry (from imageUrl)")] = None,
) -> File:
    storage = api_state(request).storage
    if not isinstance(storage, LocalStorage):
        raise NotFoundException("images are served by the storage backend")
    key = key.lstrip("/")
    try:
        remaining = storage.signer.verify(key, expires, signature)
    except ImageUrlRefused as exc:
        raise PermissionDeniedException(str(exc)) from None
    try:
        path = storage.path_for(key)
    except StorageError:
        raise NotFoundException("image not found") from None
    if not path.is_file():
        raise NotFoundException("image not found")
    # The bytes under a key never change; a cache may keep them as long as the URL is valid.
    return File(path=path, media_type="image/png", content_disposition_type="inline", filename=path.name,
                headers={"Cache-Control": f"private, max-age={remaining}, immutable"})
