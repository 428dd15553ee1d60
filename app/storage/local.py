"""``local`` storage: files under a data folder, served by the API at ``/images/{key}`` to holders of a
signed, expiring URL (:mod:`app.storage.signed_urls`)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from app.errors import StorageError
from app.storage.base import check_storage_key
from app.storage.signed_urls import ImageUrlSigner


class LocalStorage:
    name = "local"

    def __init__(self, root: Path, url_prefix: str, signer: ImageUrlSigner) -> None:
        self._root = root.resolve()
        self._url_prefix = url_prefix.rstrip("/")
        self.signer = signer

    def path_for(self, key: str) -> Path:
        """The file of ``key``; refuses keys that could leave the storage folder."""
        return self._root.joinpath(*check_storage_key(key))

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.path_for(key)
        try:
            await asyncio.to_thread(_write_atomically, path, data)
        except OSError as exc:
            raise StorageError(f"could not write {key}: {exc.strerror or exc}") from exc

    def public_url(self, key: str) -> str:
        """The API URL of ``key``, signed, valid for the signer's lifetime."""
        return f"{self._url_prefix}/{key}?{self.signer.query(key)}"

    async def aclose(self) -> None:
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    # Readers never see a half-written image: write a temp file, then rename over.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes the file owner-only; the API serving it may run as another user.
            os.fchmod(handle.fileno(), 0o644)
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
