"""The seed's error types and the short exception hierarchy that maps onto them.

The worker turns a :class:`PoseGenerationError` into a recorded pose outcome;
anything else it catches is classified with :func:`classify`. A :class:`DomainError` is a request the
domain's rules refuse; the API answers every one through a single mapping (:mod:`app.api.error_responses`).
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import Any

import httpx


class ErrorType(StrEnum):
    FLUX_API_ERROR = "FLUX_API_ERROR"
    STORAGE_ERROR = "STORAGE_ERROR"
    CREDIT_ERROR = "CREDIT_ERROR"
    TIMEOUT_ERROR = "TIMEOUT_ERROR"
    NETWORK_ERROR = "NETWORK_ERROR"
    CONTROLNET_ERROR = "CONTROLNET_ERROR"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    UNKNOWN_ERROR = "UNKNOWN_ERROR"


class PoseGenerationError(Exception):
    """A failure of one pose, carrying the seed error type it is counted under."""

    error_type: ErrorType = ErrorType.UNKNOWN_ERROR

    def __init__(self, message: str, *, error_type: ErrorType | None = None) -> None:
        super().__init__(message)
        if error_type is not None:
            self.error_type = error_type


class FluxApiError(PoseGenerationError):
    error_type = ErrorType.FLUX_API_ERROR


class ProviderTimeoutError(PoseGenerationError):
    error_type = ErrorType.TIMEOUT_ERROR


class ProviderNetworkError(PoseGenerationError):
    error_type = ErrorType.NETWORK_ERROR


class ControlNetError(PoseGenerationError):
    error_type = ErrorType.CONTROLNET_ERROR


class StorageError(PoseGenerationError):
    error_type = ErrorType.STORAGE_ERROR


def validation_detail(field: str, message: str) -> str:
    """The ``detail`` of a request refused for one field: ``Validation failed for '<field>': <message>``."""
    return f"Validation failed for '{field}': {message}"


class DomainError(Exception):
    """A request the domain's rules refuse: the caller's to change, not a fault of ours.

    Each subclass says which seed error type it counts as (``error_type``) and which request field is at
    fault (``field``, or None); :attr:`detail` is what the caller reads and :meth:`facts` what the answer
    carries besides (a balance, a cost)."""

    error_type: ErrorType = ErrorType.VALIDATION_ERROR
    field: str | None = None

    @property
    def detail(self) -> str:
        """The caller's one line: :func:`validation_detail` of the field and the message, or the message."""
        return validation_detail(self.field, str(self)) if self.field else str(self)

    def facts(self) -> dict[str, Any]:
        """JSON members of the answer besides ``errorType``, ``field`` and ``fields``; none by default."""
        return {}


def classify(exc: BaseException) -> ErrorType:
    """Map any exception raised while generating a pose to exactly one seed error type."""
    if isinstance(exc, PoseGenerationError):
        return exc.error_type
    if isinstance(exc, asyncio.TimeoutError | TimeoutError | httpx.TimeoutException):
        return ErrorType.TIMEOUT_ERROR
    if isinstance(exc, httpx.TransportError | ConnectionError):
        return ErrorType.NETWORK_ERROR
    return ErrorType.UNKNOWN_ERROR
