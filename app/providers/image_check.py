"""Whether a provider's sample is an image we may store and serve: a PNG or JPEG whose declared dimensions are
within bounds and whose pixels decode.

The header is read first (Pillow reads only the header on open), so a small file declaring 100,000 x 100,000
pixels is refused before anything is decoded; only then are the pixels decoded, which also refuses a
truncated or corrupt file.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG")


class ImageRefused(Exception):
    """Not an image we store; the message says why."""


_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


def check_image(data: bytes, max_pixels: int) -> str:
    """The format of ``data`` (``PNG`` or ``JPEG``) once its dimensions are at most ``max_pixels`` pixels and its
    pixels decode; raises :class:`ImageRefused` otherwise."""
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise ImageRefused(f"declares far more than {max_pixels} pixels") from None
    except _UNREADABLE as exc:
        raise ImageRefused(f"is not a PNG or JPEG image ({type(exc).__name__})") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageRefused(f"declares {width} x {height} pixels, over the limit of {max_pixels}")
        try:
            image.load()
        except _UNREADABLE as exc:
            raise ImageRefused(f"does not decode ({type(exc).__name__})") from None
        return str(image.format)
