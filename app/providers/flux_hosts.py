"""Where the FLUX provider sends its API key, and where it fetches samples from.

FLUX's answers name URLs: the submission's ``polling_url`` and the finished task's ``result.sample``. A broken or
hostile provider (or whoever sits between us) could name any host, so neither is used unchecked:

- **The key** (``x-key``) goes only to ``FLUX_BASE_URL``'s origin and, over https, to the hosts
  ``FLUX_API_HOSTS`` names (BFL's global and regional API hosts: a ``polling_url`` "already points at the region
  that handled the request", in BFL's words). A ``polling_url`` elsewhere is not polled.
- **Samples** come only from ``FLUX_BASE_URL``'s origin and, over https, from the hosts ``FLUX_DELIVERY_HOSTS``
  names (BFL's ``delivery-eu1.bfl.ai``-style delivery hosts). Anything else (our own API, Redis's port, a cloud
  metadata address, an internal page) is never fetched.

A host list is exact names and patterns whose ``*`` stands for part or all of *one* DNS label: ``api.*.bfl.ai``
is ``api.eu.bfl.ai`` and ``api.us1.bfl.ai``, never ``api.bfl.ai.evil.example`` or ``x.y.bfl.ai``. Not a suffix
match on ``bfl.ai``: that domain also names hosts run by others (the documentation and help-centre sites) and
delivery hosts (storage), none of which has any use for our key. A host that only a pattern matches must also
resolve to public addresses only, every one of them: a loopback, private, link-local or otherwise non-global
address is refused unless the list names the host (or the address) exactly. ``FLUX_BASE_URL``'s origin is
configured by the operator and always trusted (the tests' fake FLUX listens on 127.0.0.1).

The check happens just before the connection is made, on the addresses the system resolver gives then; a host
whose DNS its owner turns against us between the check and the connection (DNS rebinding) is beyond it, which is
why patterns stay within domains whose DNS the provider runs.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Iterable

import httpx

from app.errors import ProviderNetworkError
from app.upstream import origin_of

_DEFAULT_PORTS = {"http": 80, "https": 443}


class UntrustedUrl(ValueError):
    """A URL FLUX named that the provider will not call (the message says why; it names the origin only)."""


def matches(pattern: str, host: str) -> bool:
    """Whether ``host`` (lower case ASCII, no trailing dot) is one ``pattern`` describes (see the module)."""
    pattern_labels, host_labels = pattern.split("."), host.split(".")
    return len(pattern_labels) == len(host_labels) and all(
        fnmatch.fnmatchcase(label, wanted) for wanted, label in zip(pattern_labels, host_labels, strict=True))


class TrustedHosts:
    """One host list (``FLUX_API_HOSTS`` or ``FLUX_DELIVERY_HOSTS``) plus ``FLUX_BASE_URL``'s origin."""

    def __init__(self, base_url: httpx.URL, patterns: Iterable[str], setting: str) -> None:
        self._base = _origin_key(base_url)
        self._patterns = tuple(patterns)
        self._setting = setting
        self._named_addresses = {ipaddress.ip_address(p) for p in self._patterns if _is_address(p)}

    async def check(self, url: httpx.URL, what: str) -> None:
        """Return when ``url`` may be called; else raise :class:`UntrustedUrl` naming ``what`` and its origin."""
        if url.scheme not in _DEFAULT_PORTS:
            raise UntrustedUrl(f"{what} is not an http(s) URL ({origin_of(url)}); not called")
        if _origin_key(url) == self._base:
            return
        host = _ascii_host(url)
        if url.scheme != "https" or not any(matches(p, host) for p in self._patterns):
            raise UntrustedUrl(f"{what} is on {origin_of(url)}, neither FLUX_BASE_URL's origin nor an https host "
                               f"{self._setting} allows; not called")
        if host in self._patterns:
            return  # named exactly: the operator vouches for it, wherever it resolves
        for address in await _addresses(host, url.port or 443):
            if (not address.is_global or address.is_multicast) and address not in self._named_addresses:
                raise UntrustedUrl(f"{what} is on {origin_of(url)}, which resolves to {address}, a non-public "
                                   f"address {self._setting} does not name; not called")


def _origin_key(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, _ascii_host(url), url.port or _DEFAULT_PORTS.get(url.scheme)


def _ascii_host(url: httpx.URL) -> str:
    return url.raw_host.decode("ascii", errors="replace").lower().rstrip(".")


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address ``host`` resolves to now (an IPv4-mapped IPv6 address as its IPv4 one)."""
    if _is_address(host.strip("[]")):
        found = [ipaddress.ip_address(host.strip("[]"))]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ProviderNetworkError(f"FLUX host {host} does not resolve ({type(exc).__name__})") from None
        found = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    return [a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a for a in found]
