"""What every storage backend offers the worker and the API."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Protocol

from app.errors import StorageError


class ImageStorage(Protocol):
    name: str

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``; raise :class:`app.errors.StorageError` on failure."""
        ...

    def public_url(self, key: str) -> str:
        """Where a client fetches the image: absolute, or relative to the API."""
        ...

    async def aclose(self) -> None: ...


def check_storage_key(key: str) -> tuple[str, ...]:
    """``key``'s ``/``-separated parts, once it is a safe storage key.

    Raises :class:`app.errors.StorageError` for a key that could leave its folder or bucket (empty, absolute,
    ``.``/``..`` parts, backslashes, NUL): a file path would escape the storage folder, and HTTP clients
    resolve ``.`` and ``..`` in URL paths, writing into another bucket.
    """
    parts = PurePosixPath(key).parts
    if not key or "\\" in key or "\x00" in key or key.startswith("/") or any(p in (".", "..") for p in parts):
        raise StorageError("invalid storage key")  # the key itself stays out of messages that get recorded
    return parts
