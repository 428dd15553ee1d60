"""Expiring, signed URLs for images the API serves itself (the ``local`` storage backend).

A URL carries ``expires`` (Unix seconds) and ``signature``, the HMAC-SHA256 of the key and the expiry
under a key derived from ``JWT_SECRET``; whoever holds it may fetch the image until it expires, anyone
else gets 403. The expiry is rounded up to a tenth of the lifetime, so repeated polls of a generation
show the same URL (and the same ETag) for a while and browsers can cache the image.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from urllib.parse import urlencode

# Separates this use of JWT_SECRET from token signing: the derived key signs nothing else.
_KEY_PURPOSE = b"posegen image urls v1"


class ImageUrlRefused(Exception):
    """A request for an image whose URL is unsigned, tampered with or expired; the message says which."""


class ImageUrlSigner:
    def __init__(self, secret: str, ttl_seconds: int, clock: Callable[[], float] = time.time) -> None:
        """``ttl_seconds``: how long a URL stays valid at least (up to a tenth longer, see the module)."""
        self._key = hmac.new(secret.encode(), _KEY_PURPOSE, hashlib.sha256).digest()
        self._ttl = ttl_seconds
        self._step = max(1, ttl_seconds // 10)
        self._clock = clock

    def query(self, key: str) -> str:
        """The query string (``expires=...&signature=...``) that makes a URL of ``key`` fetchable."""
        expires = math.ceil((self._clock() + self._ttl) / self._step) * self._step
        return urlencode({"expires": expires, "signature": self._sign(key, expires)})

    def verify(self, key: str, expires: str | None, signature: str | None) -> int:
        """Seconds the URL stays valid; raises :class:`ImageUrlRefused` when it is unsigned, forged or expired."""
        if not expires or not signature:
            raise ImageUrlRefused("image URLs must be signed: use the imageUrl of the generation")
        try:
            deadline = int(expires)
        except ValueError:
            raise ImageUrlRefused("the image URL's signature does not match") from None
        # compare_digest takes ASCII strings only; a signature is hex, so anything else is simply wrong.
        if not signature.isascii() or not hmac.compare_digest(signature, self._sign(key, deadline)):
            raise ImageUrlRefused("the image URL's signature does not match")
        remaining = deadline - int(self._clock())
        if remaining <= 0:
            raise ImageUrlRefused("the image URL has expired: poll the generation for a fresh imageUrl")
        return remaining

    def _sign(self, key: str, expires: int) -> str:
        return hmac.new(self._key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()
