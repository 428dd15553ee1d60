"""Serves images kept by the ``local`` storage backend (keys are unguessable generation paths)."""

from __future__ import annotations

from litestar import Request, get
from litestar.exceptions import NotFoundException
from litestar.response import File

from app.api.openapi import error_responses
from app.errors import StorageError


@get("/images/{key:path}", summary="A generated image (local storage)", tags=["images"], media_type="image/png",
     responses=error_responses(404))
async def image(request: Request, key: str) -> File:
    storage = request.app.state.storage
    if not hasattr(storage, "path_for"):
        raise NotFoundException("images are served by the storage backend")
    try:
        path = storage.path_for(key.lstrip("/"))
    except StorageError:
        raise NotFoundException("image not found") from None
    if not path.is_file():
        raise NotFoundException("image not found")
    return File(path=path, media_type="image/png", content_disposition_type="inline")
