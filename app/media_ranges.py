"""Proactive content negotiation (RFC 9110 section 12.5.1): which of a resource's representations an
``Accept`` header prefers.

One parser for every HTTP endpoint of the service: the API's routes (``app/api/negotiation.py``) and the
three Prometheus endpoints (``app/observability/exposition.py``). An ``Accept`` header is a list of media
ranges (``*/*``, ``type/*``, ``type/subtype``), each refined by parameters and weighted by ``q`` (0 to 1,
default 1; ``q=0`` means "not acceptable"). A representation's weight is the weight of the most specific
range that matches it (``text/*;q=0.5, text/plain`` gives ``text/plain`` 1 and ``text/html`` 0.5); a range
matches when its type and subtype match (or are ``*``) and each of its parameters has the same value in the
representation. Members that are not media ranges are ignored, as are accept-extensions after ``q``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


@dataclass(frozen=True)
class MediaRange:
    """One member of an ``Accept`` header (or a representation's media type, with weight 1)."""

    type: str
    subtype: str
    parameters: tuple[tuple[str, str], ...]
    weight: float = 1.0

    @property
    def specificity(self) -> tuple[bool, bool, int]:
        """Orders ranges from ``*/*`` (least) to ``type/subtype`` with the most parameters."""
        return self.type != "*", self.subtype != "*", len(self.parameters)

    def matches(self, representation: MediaRange) -> bool:
        if self.type not in ("*", representation.type) or self.subtype not in ("*", representation.subtype):
            return False
        offered = dict(representation.parameters)
        return all(offered.get(name) == value for name, value in self.parameters)


def _split(text: str, separator: str) -> Iterator[str]:
    """``text`` cut at ``separator`` outside double-quoted strings (which may hold it, and backslash escapes)."""
    start, quoted, escaped = 0, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            yield text[start:index]
            start = index + 1
    yield text[start:]


def _unquote(value: str) -> str | None:
    if _TOKEN.fullmatch(value):
        return value
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return None


def _media_range(member: str) -> MediaRange | None:
    """One ``media-range [weight]``, or None when it is not one. Names and values are compared ignoring case
    (type, subtype and parameter names are case-insensitive; the values of the parameters we negotiate on,
    ``charset``, ``version`` and ``escaping``, are tokens whose case carries nothing)."""
    full_type, *parameters = (part.strip() for part in _split(member, ";"))
    main, slash, sub = full_type.lower().partition("/")
    if not (slash and _TOKEN.fullmatch(main) and _TOKEN.fullmatch(sub)) or (main == "*" and sub != "*"):
        return None
    named: list[tuple[str, str]] = []
    weight = 1.0
    for parameter in parameters:
        if not parameter:
            continue  # "text/plain;" : an empty parameter is allowed by the grammar's OWS
        name, equals, raw = parameter.partition("=")
        name = name.strip().lower()
        value = _unquote(raw.strip())
        if not (equals and _TOKEN.fullmatch(name)) or value is None:
            return None
        if name == "q":
            if not _QVALUE.fullmatch(value):
                return None
            weight = float(value)
            break  # what follows the weight are accept-extensions, which no one defines
        named.append((name, value.lower()))
    return MediaRange(main, sub, tuple(named), weight)


# Headers up to this long are remembered (scrapers and clients send the same few again and again); longer ones,
# which only a hostile client sends, are parsed each time, so the caches hold at most a few hundred KiB.
_CACHED_CHARS = 256


def _parse(header: str) -> tuple[MediaRange, ...]:
    return tuple(parsed for member in _split(header, ",") if member.strip()
                 and (parsed := _media_range(member.strip())) is not None)


_parse_cached = lru_cache(maxsize=256)(_parse)


def parse_accept(header: str) -> tuple[MediaRange, ...]:
    """The media ranges of an ``Accept`` header value, in order; members that are not media ranges are left
    out."""
    return _parse_cached(header) if len(header) <= _CACHED_CHARS else _parse(header)


def weight(ranges: Sequence[MediaRange], representation: str) -> float:
    """How much ``ranges`` want ``representation`` (a media type with its parameters, such as
    ``text/plain; version=0.0.4; charset=utf-8``): the weight of the most specific range that matches it (the
    highest among equally specific ones), 0 when none does."""
    offered = parse_accept(representation)
    matching = [r for r in ranges if offered and r.matches(offered[0])]
    if not matching:
        return 0.0
    return max(matching, key=lambda r: (r.specificity, r.weight)).weight


def _preferred(header: str, representations: tuple[str, ...]) -> str | None:
    ranges = parse_accept(header)
    best, best_weight = None, 0.0
    for representation in representations:
        found = weight(ranges, representation)
        if found > best_weight:  # strictly: on equal weight the earlier (the server's preference) stays
            best, best_weight = representation, found
    return best


_preferred_cached = lru_cache(maxsize=512)(_preferred)


def preferred(accept: str | None, representations: Sequence[str]) -> str | None:
    """Which of ``representations`` (media types with parameters, in the server's order of preference) to
    send for a request's ``Accept`` header: the one with the highest weight, the earlier on a tie; the first
    when the request sends no ``Accept`` (or an empty one: any type will do); None when the header makes
    none of them acceptable (answer 406)."""
    if accept is None or not accept.strip():
        return representations[0] if representations else None
    choose = _preferred_cached if len(accept) <= _CACHED_CHARS else _preferred
    return choose(accept, tuple(representations))
