"""The ASGI callable types the observability wrappers share (:mod:`app.observability.asgi`, ``sentry``,
``tracing``): plain aliases, so the integrations need not import the module that composes them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[..., Awaitable[Any]]
Send = Callable[..., Awaitable[Any]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
