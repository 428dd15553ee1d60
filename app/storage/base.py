"""What every storage backend offers the worker and the API."""

from __future__ import annotations

from typing import Protocol


class ImageStorage(Protocol):
    name: str

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``; raise :class:`app.errors.StorageError` on failure."""
        ...

    def public_url(self, key: str) -> str:
        """Where a client fetches the image: absolute, or relative to the API."""
        ...

    async def aclose(self) -> None: ...
