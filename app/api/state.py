"""What the API's handlers share, as one typed object: the settings, the pools and clients the lifespan opens,
and the per-process helpers built from them.

The app factory (:mod:`app.api.app`) builds one :class:`ApiState` when its lifespan starts and stores it on
``app.state`` (where it stays after the lifespan ends); handlers, dependencies and middleware fetch it with
:func:`api_state`, so every use is checked by mypy rather than read from an untyped attribute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from litestar.connection import ASGIConnection
from litestar.datastructures import State
from psycopg_pool import AsyncConnectionPool
from redis import Redis
from rq import Queue

from app.api.checkout import CheckoutCheck
from app.api.console_sessions import ConsoleSessions, SignInForms
from app.api.enqueuer import BatchEnqueuer
from app.api.generation_creates import GenerationCreator
from app.api.generation_reads import GenerationReader
from app.domain.intake import IntakeGate
from app.errors import ErrorType
from app.settings import Settings
from app.storage.base import ImageStorage

# The key of the one ApiState in ``app.state``.
API_STATE_KEY = "api"


class ErrorEventAllowance(Protocol):
    """Whether a caller's error event may be written (:class:`app.api.rate_limit.CallerLimits`)."""

    async def may_record_error_event(self, user_id: str, error_type: ErrorType) -> bool: ...


@dataclass(frozen=True)
class ApiState:
    """One API process's shared objects, from its lifespan's start to its end.

    ``enqueuer`` is None when each request enqueues its own job (APM on); ``flux_webhook_secret`` is the key FLUX
    signs its webhooks with (:func:`app.providers.flux_webhooks.webhook_secret`)."""

    settings: Settings
    pool: AsyncConnectionPool
    checkout_check: CheckoutCheck
    redis: Redis
    queue: Queue
    intake_gate: IntakeGate
    console_sessions: ConsoleSessions
    sign_in_forms: SignInForms
    enqueuer: BatchEnqueuer | None
    storage: ImageStorage
    generation_reader: GenerationReader
    creator: GenerationCreator
    caller_limits: ErrorEventAllowance
    flux_webhook_secret: str


def api_state(source: ASGIConnection[Any, Any, Any, Any] | State) -> ApiState:
    """The app's :class:`ApiState`, from a request (or any connection) or from ``app.state`` itself. Raises
    RuntimeError before the lifespan has started."""
    state = source if isinstance(source, State) else source.app.state
    found = state.get(API_STATE_KEY)
    if not isinstance(found, ApiState):
        raise RuntimeError("the API's state is not open: its lifespan has not started")
    return found
