"""The seed's error types and the short exception hierarchy that maps onto them.

The worker turns a :class:`PoseGenerationError` into a recorded pose outcome;
anything else it catches is classified with :func:`classify`.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

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


def classify(exc: BaseException) -> ErrorType:
    """Map any exception raised while generating a pose to exactly one seed error type."""
    if isinstance(exc, PoseGenerationError):
        return exc.error_type
    if isinstance(exc, asyncio.TimeoutError | TimeoutError | httpx.TimeoutException):
        return ErrorType.TIMEOUT_ERROR
    if isinstance(exc, httpx.TransportError | ConnectionError):
        return ErrorType.NETWORK_ERROR
    return ErrorType.UNKNOWN_ERROR
