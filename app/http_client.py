"""Outbound HTTP clients (FLUX, Supabase Storage) sharing one TLS context per process.

Building an ``httpx.AsyncClient`` loads the CA bundle into a new SSL context each time: 20-90 ms of CPU,
paid by every work-horse for every generation. The worker builds the context once before it forks
(:func:`warm_tls`), so each horse's clients reuse it.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """This process's TLS context for outbound calls (certificate checks on; SSL_CERT_FILE honoured)."""
    return httpx.create_ssl_context()


def warm_tls() -> None:
    """Build the shared context now, so processes forked later inherit it instead of each building one."""
    shared_ssl_context()


def async_client(timeout: httpx.Timeout) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` with ``timeout`` on the shared TLS context."""
    return httpx.AsyncClient(timeout=timeout, verify=shared_ssl_context())
