"""How the settings read one environment variable: by kind, checked, and refused in one line naming it.

:mod:`app.settings` declares each variable once (name, default, reader, meaning, area); the readers here are
what a declaration names: :func:`text`, :func:`url`, :func:`number`, :func:`integer`, :func:`choice`,
:func:`flag`, :func:`hosts` and the parsers of the structured values (faults, latency, Sentinel). A bad value
raises :class:`SettingsError` whose message names the variable and never prints a password.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from app.errors import ErrorType


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class LatencyRange:
    """Seconds of simulated latency per pose for the local provider: fixed or uniform in [low, high]."""

    low: float = 0.0
    high: float = 0.0


@dataclass(frozen=True)
class RedisSentinel:
    """Where Redis Sentinel finds the master: the sentinels' ``(host, port)`` addresses, the monitored
    service's name (Sentinel's ``master-name``) and the sentinels' own password ("" for none)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    password: str = ""


N = TypeVar("N", int, float)

# How a declaration reads its variable: ``(reader, name, default) -> value``, raising SettingsError.
Read = Callable[["Reader", str, Any], Any]


# A sentinel's address: a host name or IPv4 address, or an IPv6 address in brackets; an ASCII port.
_SENTINEL_ADDRESS = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})",
                               re.ASCII)
# The name Sentinel monitors a master as (``sentinel monitor <name> ...``), kept to what a config file and a
# ``SENTINEL`` command spell without quoting.
_SENTINEL_MASTER_NAME = re.compile(r"[A-Za-z0-9._:-]{1,255}", re.ASCII)

def text(reader: Reader, name: str, default: str) -> str:
    """The value as given; unset or empty gives ``default``."""
    return reader.text(name, default)


def flag(reader: Reader, name: str, default: bool | None) -> bool | None:
    """A switch (see :meth:`Reader.flag`)."""
    return reader.flag(name, default)


def hosts(reader: Reader, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated host list (see :func:`parse_host_patterns`)."""
    return reader.hosts(name, default)


def optional_path(reader: Reader, name: str, default: Path | None) -> Path | None:
    """A filesystem path; unset gives None."""
    return reader.path(name)


def path(reader: Reader, name: str, default: Path) -> Path:
    """A filesystem path; unset gives ``default``."""
    return Path(reader.text(name, str(default)))


def role_name(reader: Reader, name: str, default: str) -> str:
    """A PostgreSQL role name (see :meth:`Reader.role_name`); unset gives ""."""
    return reader.role_name(name)


def faults(reader: Reader, name: str, default: Mapping[ErrorType, float]) -> dict[ErrorType, float]:
    """Fault-drill fractions by error type (see :func:`parse_faults`)."""
    return parse_faults(reader.raw(name, "faults"))


def latency(reader: Reader, name: str, default: LatencyRange) -> LatencyRange:
    """Seconds per pose, fixed or a range (see :func:`parse_latency`)."""
    return parse_latency(reader.raw(name, "latency"))


def sentinel(reader: Reader, name: str, default: RedisSentinel | None) -> RedisSentinel | None:
    """``REDIS_SENTINELS`` with its companions (see :meth:`Reader.sentinel`)."""
    return reader.sentinel()


def or_fallback(fallback: str) -> Read:
    """Text that, when unset, is read from the variable ``fallback`` (then ``default``)."""
    def read(reader: Reader, name: str, default: str) -> str:
        return reader.text(name, reader.text(fallback, default))
    return read


def choice(*allowed: str) -> Read:
    """One of ``allowed``, spelled exactly."""
    def read(reader: Reader, name: str, default: str) -> str:
        return reader.choice(name, default, allowed)
    return read


def url(*schemes: str, optional: bool = False, strip_slash: bool = False) -> Read:
    """A URL of one of ``schemes`` (see :meth:`Reader.url`); ``strip_slash``: without its trailing ``/``."""
    def read(reader: Reader, name: str, default: str) -> str:
        value = reader.url(name, default, schemes, optional=optional)
        return value.rstrip("/") if strip_slash else value
    return read


def number(minimum: float | None = None, maximum: float | None = None) -> Read:
    """A finite number in ``[minimum, maximum]``."""
    def read(reader: Reader, name: str, default: float) -> float:
        return reader.number(name, default, minimum=minimum, maximum=maximum)
    return read


def integer(minimum: int | None = None, maximum: int | None = None) -> Read:
    """A whole number in ``[minimum, maximum]``."""
    def read(reader: Reader, name: str, default: int) -> int:
        return reader.integer(name, default, minimum=minimum, maximum=maximum)
    return read


def _check_port(port: int | str | None) -> None:
    if port is not None and not (str(port).isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"invalid port {port}")


# The values libpq (16+) takes for these connection parameters; anything else fails every connection attempt.
_LIBPQ_CHOICES = {"target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
                  "load_balance_hosts": ("disable", "random")}


def _check_postgres_url(value: str) -> None:
    """``value`` as libpq reads it before connecting: its syntax, each port, as many ports (one, or one per
    host) and ``hostaddr`` values (one per host) as hosts, and the values libpq allows for
    ``target_session_attrs`` and ``load_balance_hosts``. libpq itself reports these only when a connection is
    attempted, so every process would start and retry for ever."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(value)
    except ProgrammingError as exc:
        raise ValueError(str(exc).strip().splitlines()[0]) from None
    ports = str(params.get("port") or "").split(",")
    for port in ports:
        _check_port(port or None)
    host, hostaddr = str(params.get("host") or ""), str(params.get("hostaddr") or "")
    hosts = len(host.split(",")) if host else 1
    if host and hostaddr and len(hostaddr.split(",")) != hosts:
        raise ValueError(f"{hosts} host names but {len(hostaddr.split(','))} hostaddr values (libpq needs one each)")
    hosts = len(hostaddr.split(",")) if hostaddr else hosts
    if len(ports) not in (1, hosts):
        raise ValueError(f"{len(ports)} ports for {hosts} hosts (libpq takes one port for all, or one per host)")
    for name, allowed in _LIBPQ_CHOICES.items():
        if name in params and params[name] not in allowed:
            raise ValueError(f"{name}={params[name]!r} is not one of: {', '.join(allowed)}")


def _check_redis_url(value: str) -> None:
    from redis.connection import parse_url

    options = parse_url(value)  # ValueError for a bad db/socket_timeout/... query value
    if value.startswith("unix://"):
        if not options.get("path"):
            raise ValueError("names no socket path")
        return
    parts = urlsplit(value)
    _check_port(parts.port)
    if not parts.hostname:
        raise ValueError("names no host")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError("the path must be a Redis database number, such as /0")


# A secret of fewer distinct characters than this is a typed pattern, not a random one: 32 random bytes in
# hex or base64 show 14 or more (``aaaa...``, ``abab...`` show 1 or 2).
MIN_SECRET_DISTINCT_CHARACTERS = 10
# Words of the examples and templates a secret is copied from, never of a random one.
_PLACEHOLDER_WORDS = ("changeme", "replaceme", "placeholder", "yoursecret", "your256bitsecret", "example", "dontuse",
                      "notforproduction")


def placeholder_problem(name: str, secret: str) -> str | None:
    """A secret that is long enough but is a placeholder or a pattern; None when it may be random."""
    letters = "".join(c for c in secret.lower() if c.isalnum())
    word = next((w for w in _PLACEHOLDER_WORDS if w in letters), None)
    if word is not None:
        return f"{name} looks like a placeholder (it contains {word!r}); set a random secret"
    if len(set(secret)) < MIN_SECRET_DISTINCT_CHARACTERS:
        return (f"{name} has {len(set(secret))} distinct characters, a pattern rather than a random secret; "
                "generate one, e.g. openssl rand -hex 32")
    unit = next((n for n in range(1, len(secret) // 2 + 1)
                 if (secret[:n] * (len(secret) // n + 1)).startswith(secret)), None)
    if unit is not None:
        return (f"{name} repeats its first {unit} characters, a pattern rather than a random secret; "
                "generate one, e.g. openssl rand -hex 32")
    return None


_LOOPBACK_HOSTS = ("localhost", "::1")


def _is_loopback(host: str | None) -> bool:
    return bool(host) and (host in _LOOPBACK_HOSTS or str(host).startswith("127."))


def plain_http_problem(name: str, url: str) -> str | None:
    """An ``http://`` URL to another host, refused in production: what crosses a network goes over TLS (a
    provider key, users' images and webhook results would travel in the clear)."""
    if url.startswith("http://") and not _is_loopback(urlsplit(url).hostname):
        return f"{name}={shown_url(url)!r} is plain http; use https:// (refused with POSEGEN_ENV=production)"
    return None


def shown_url(value: str, text: str | None = None) -> str:
    """``text`` (default: ``value`` itself) fit to print: every password ``value`` carries, as a URL's
    (``scheme://user:PASSWORD@host``, up to the authority's last ``@``, so an unencoded ``@`` in it hides nothing)
    or as ``password=`` (libpq keyword strings, query strings), raw or percent-decoded, replaced by ``***``.
    Textual, so a URL too broken to parse is redacted too, and so is a parser's message that quotes it."""
    shown = value if text is None else text
    for secret in sorted(_passwords_in(value), key=len, reverse=True):
        shown = shown.replace(secret, "***")
    return shown


def _passwords_in(value: str) -> set[str]:
    from urllib.parse import unquote

    found = {m.group(1) for m in _URL_PASSWORD.finditer(value)}
    found |= {m.group(2) for m in _KEYWORD_PASSWORD.finditer(value)}
    forms = {form for secret in found if secret for form in (secret, unquote(secret)) if form}
    # A parser may quote a piece of a password with an unencoded '@', ':' or '/' in it: those pieces too.
    return forms | {piece for form in forms for piece in re.split(r"[@:/]", form) if len(piece) >= 4}


_ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_URL_PASSWORD = re.compile(r"://[^/@\s:]*:([^/\s]*)@")
_KEYWORD_PASSWORD = re.compile(r"(?i)(password\s*=\s*)([^&\s]*)")


class Reader:
    """Reads variables by kind, and records each name it read with its kind (see :meth:`Settings.variables`)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.kinds: dict[str, str] = {}

    def raw(self, name: str, kind: str = "text") -> str:
        self.kinds.setdefault(name, kind)
        return self._env.get(name) or ""

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def sentinel(self) -> RedisSentinel | None:
        """``REDIS_SENTINELS`` (comma-separated ``host:port``, IPv6 as ``[::1]:26379``) with
        ``REDIS_SENTINEL_MASTER`` (the service name), both or neither, and ``REDIS_SENTINEL_PASSWORD`` (the
        sentinels' ``requirepass``, if any); None when neither is set."""
        self.kinds.setdefault("REDIS_SENTINELS", "hosts")
        self.kinds.setdefault("REDIS_SENTINEL_MASTER", "text")
        raw, master = self.raw("REDIS_SENTINELS", "hosts").strip(), self.raw("REDIS_SENTINEL_MASTER").strip()
        password = self.raw("REDIS_SENTINEL_PASSWORD")
        if not raw and not master:
            if password:
                raise SettingsError("REDIS_SENTINEL_PASSWORD is set without REDIS_SENTINELS and REDIS_SENTINEL_MASTER")
            return None
        if not raw:
            raise SettingsError("REDIS_SENTINEL_MASTER is set without REDIS_SENTINELS (host:port,host:port,...)")
        if not master:
            raise SettingsError("REDIS_SENTINELS is set without REDIS_SENTINEL_MASTER (the monitored master's name)")
        if not _SENTINEL_MASTER_NAME.fullmatch(master):
            raise SettingsError(f"REDIS_SENTINEL_MASTER={master!r} is not a Sentinel master name "
                                "(letters, digits and . _ - : only, up to 255)")
        sentinels: list[tuple[str, int]] = []
        for item in (part.strip() for part in raw.split(",")):
            address = _SENTINEL_ADDRESS.fullmatch(item)
            if address is None or not 1 <= int(address["port"]) <= 65535:
                raise SettingsError(f"REDIS_SENTINELS entry {item!r} is not host:port (port 1-65535; an IPv6 "
                                    "address in brackets, [::1]:26379)")
            host = address["ipv6"] or address["host"]
            if (host, int(address["port"])) in sentinels:
                raise SettingsError(f"REDIS_SENTINELS names {item!r} twice")
            sentinels.append((host, int(address["port"])))
        return RedisSentinel(tuple(sentinels), master, password)

    def role_name(self, name: str) -> str:
        """A PostgreSQL role name, as plain as one in a URL stays readable: letters, digits and ``_``, up to 63."""
        value = self.text(name, "")
        if value and not _ROLE_NAME.fullmatch(value):
            raise SettingsError(f"{name}={value!r} is not a role name: letters, digits and _, up to 63, "
                                "not starting with a digit")
        return value

    def path(self, name: str) -> Path | None:
        value = self.text(name, "")
        return Path(value) if value else None

    def flag(self, name: str, default: bool | None) -> bool | None:
        """A switch: ``true``/``1``/``yes``/``on`` or ``false``/``0``/``no``/``off`` (any case); unset gives
        ``default`` (None: the variable's owner, such as ddtrace, decides)."""
        raw = self.raw(name, "flag").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={raw!r} is not a switch: use true or false")

    def hosts(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A comma-separated host list (see :func:`parse_host_patterns`); unset gives ``default``."""
        raw = self.raw(name, "hosts")
        return parse_host_patterns(name, raw) if raw.strip() else default

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        self.kinds.setdefault(name, "choice")
        value = self.text(name, default)
        if value not in allowed:
            raise SettingsError(f"{name}={value!r} is not one of: {', '.join(allowed)}")
        return value

    def url(self, name: str, default: str, schemes: tuple[str, ...], *, optional: bool = False) -> str:
        """A URL of one of ``schemes``, no whitespace, parsed as its client parses it: PostgreSQL URLs by libpq's
        rules (psycopg's ``conninfo_to_dict``: a unix-socket ``host=`` query or several hosts are fine),
        Redis URLs by redis-py's ``parse_url`` (``db``, ``socket_timeout`` query values; the path a database
        number), others with a host. Ports are 1-65535. ``optional``: unset is ""."""
        self.kinds.setdefault(name, "url")
        value = self.text(name, default)
        if optional and not value:
            return ""
        if not value.startswith(schemes):
            raise SettingsError(f"{name}={shown_url(value)!r} must start with one of: {', '.join(schemes)}")
        if any(c.isspace() for c in value):
            raise SettingsError(f"{name}={shown_url(value)!r} contains whitespace")
        if value == default:
            return value
        try:
            if value.startswith(("postgresql://", "postgres://")):
                _check_postgres_url(value)
            elif value.startswith(("redis://", "rediss://", "unix://")):
                _check_redis_url(value)
            else:
                parts = urlsplit(value)
                _check_port(parts.port)
                if not parts.hostname:
                    raise ValueError("names no host")
        except ValueError as exc:
            raise SettingsError(f"{name}={shown_url(value)!r}: {shown_url(value, str(exc))}") from None
        return value

    def number(
        self, name: str, default: float, *, minimum: float | None = None, maximum: float | None = None
    ) -> float:
        return self._bounded(name, "number", default, _finite, minimum, maximum)

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        return self._bounded(name, "integer", default, _whole, minimum, maximum)

    def _bounded(self, name: str, kind: str, default: N, convert: Callable[[str, str], N],
                 minimum: float | None, maximum: float | None) -> N:
        """``name`` converted by ``convert`` and checked against ``[minimum, maximum]``; unset gives ``default``."""
        raw = self.raw(name, kind)
        if not raw:
            return default
        value = convert(name, raw)
        _check_range(name, raw, value, minimum, maximum)
        return value


def _whole(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None


def _finite(name: str, raw: str) -> float:
    """``raw`` as a float; nan and the infinities are refused (every comparison with nan is false, so a
    range check alone would let it through)."""
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name}={raw!r} must be a finite number")
    return value


def _check_range(name: str, raw: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name}={raw!r} must be at most {maximum}")


def parse_faults(raw: str) -> dict[ErrorType, float]:
    """Parse ``POSEGEN_FAULTS`` such as ``FLUX_API_ERROR=0.1,TIMEOUT_ERROR=0.05``."""
    faults: dict[ErrorType, float] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, fraction = item.partition("=")
        if not sep:
            raise SettingsError(f"POSEGEN_FAULTS item {item!r} must look like ERROR_TYPE=fraction")
        try:
            error_type = ErrorType(name.strip())
        except ValueError:
            allowed = ", ".join(e.value for e in ErrorType)
            raise SettingsError(
                f"POSEGEN_FAULTS names unknown error type {name!r}; use one of {allowed}"
            ) from None
        value = _finite(f"POSEGEN_FAULTS {name}", fraction.strip())
        if not 0.0 <= value <= 1.0:
            raise SettingsError(f"POSEGEN_FAULTS value for {name} must be between 0 and 1, got {value}")
        faults[error_type] = value
    if sum(faults.values()) > 1.0 + 1e-9:
        raise SettingsError("POSEGEN_FAULTS fractions add up to more than 1")
    return faults


_HOST_LABEL = re.compile(r"^[a-z0-9*](?:[a-z0-9*-]{0,61}[a-z0-9*])?$")


def parse_host_patterns(name: str, raw: str) -> tuple[str, ...]:
    """``FLUX_API_HOSTS``-style lists: ``api.bfl.ai, api.*.bfl.ai, 10.0.0.7``. Each entry is a host name, an IP
    address, or a pattern whose ``*`` stands for part of one label; the last two labels are always spelled
    out, so no entry covers a whole top-level domain or every host of a registrable one."""
    import ipaddress

    entries: list[str] = []
    for item in (part.strip().lower().rstrip(".") for part in raw.split(",")):
        if not item:
            continue
        try:
            entries.append(str(ipaddress.ip_address(item.strip("[]"))))
            continue
        except ValueError:
            pass
        labels = item.split(".")
        if not all(_HOST_LABEL.match(label) for label in labels):
            raise SettingsError(f"{name} entry {item!r} is not a host name, an IP address or a pattern such as "
                                "api.*.bfl.ai")
        if "*" in "".join(labels[-2:]):
            raise SettingsError(f"{name} entry {item!r} has a * in its last two labels; spell out the domain")
        entries.append(item)
    return tuple(entries)


def parse_latency(raw: str) -> LatencyRange:
    """Parse ``POSEGEN_LOCAL_LATENCY``: seconds per pose, ``2`` or a range ``0.5-3``."""
    raw = raw.strip()
    if not raw:
        return LatencyRange()
    low_text, sep, high_text = raw.partition("-")
    try:
        low = float(low_text)
        high = float(high_text) if sep else low
    except ValueError:
        raise SettingsError(
            f"POSEGEN_LOCAL_LATENCY={raw!r} must be seconds (e.g. 2) or a range (e.g. 0.5-3)"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SettingsError(f"POSEGEN_LOCAL_LATENCY={raw!r} must be finite seconds")
    if low < 0 or high < low:
        raise SettingsError(f"POSEGEN_LOCAL_LATENCY={raw!r} must be non-negative with low <= high")
    return LatencyRange(low, high)
