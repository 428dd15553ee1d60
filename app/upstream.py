"""What we take from an upstream service's answer (FLUX, Supabase Storage): a body read with a size cap, and
an excerpt fit to record.

An answer is untrusted input. Its body is streamed and given up as soon as it passes the caller's cap (a
declared ``Content-Length`` over the cap is refused before anything is read), so a 1.5 GB "image" or a 200 MB
JSON document costs the cap, not the whole body, in memory. Bodies are asked for and read unencoded: a
compressed answer could expand a thousandfold past the cap between two checks.

Whatever of an answer ends up in an error message (and so in the database, the logs and Sentry) is an
:func:`excerpt`: short, without control characters (PostgreSQL refuses NUL in text; others forge log lines or
hide text), and without the query strings of the URLs it names (signed URLs carry their signature there).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import httpx

#: Sent with every capped call: the body we count is the body that arrives.
IDENTITY_ENCODING = {"accept-encoding": "identity"}
EXCERPT_CHARS = 120
_URL_TAIL = re.compile(r"(?i)\b((?:https?|wss?|ftp)://[^\s?#\"'<>]*)[?#][^\s\"'<>]*")
_SPACES = re.compile(r"\s+")


class AnswerTooLarge(Exception):
    """An answer's body is over the cap its caller set; nothing more of it was read."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        self.limit = limit
        self.declared = declared
        size = f"declares {declared} bytes" if declared is not None else f"goes on past {limit} bytes"
        super().__init__(f"the answer {size}, over the limit of {limit} bytes")


class EncodedAnswer(Exception):
    """An answer compressed although we asked for it unencoded: its size after decoding is unknown."""

    def __init__(self, encoding: str) -> None:
        super().__init__(f"the answer is {excerpt(encoding, 40)}-encoded although identity was asked for")


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed ``response`` (``client.stream(...)`` or ``send(..., stream=True)``), at most ``limit``
    bytes; raises :class:`AnswerTooLarge` past it and :class:`EncodedAnswer` for a compressed body, and httpx's
    transport errors when the connection fails midway."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise EncodedAnswer(encoding)
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise AnswerTooLarge(limit, int(declared))
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise AnswerTooLarge(limit)
    return bytes(body)


async def read_excerpt(response: httpx.Response, limit: int = 4096) -> str:
    """An :func:`excerpt` of the start of an error answer's body; reads at most ``limit`` bytes of it, and
    gives "" when the body cannot be read (the status already says what went wrong)."""
    head = bytearray()
    try:
        async for chunk in response.aiter_raw():
            head += chunk
            if len(head) >= limit:
                break
    except httpx.HTTPError:
        pass
    return excerpt(bytes(head[:limit]))


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``value`` (text, bytes, or anything else by its ``repr``) as at most ``limit`` characters fit to record:
    control, format and unpaired surrogate characters become spaces, runs of white space one space, and URLs
    lose their query string and fragment."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        text = bytes(value[: limit * 8]).decode("utf-8", errors="replace")
    else:
        text = value if isinstance(value, str) else repr(value)
        text = text[: limit * 8]  # enough to fill ``limit`` after cleaning; nothing longer is scanned
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Cs") else c for c in text)
    text = _SPACES.sub(" ", _URL_TAIL.sub(r"\1", text)).strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def origin_of(url: httpx.URL) -> str:
    """``scheme://host[:port]`` of ``url``, nothing of its path or query: what a message may name."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = f":{url.port}" if url.port is not None else ""
    return excerpt(f"{url.scheme}://{host}{port}", 200)
