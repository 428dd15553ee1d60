"""How errors leave the API: 4xx with a message naming the problem, 5xx logged and generic."""

from __future__ import annotations

from typing import Any

import psycopg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from psycopg_pool import PoolTimeout

from app.errors import ErrorType
from app.observability.logging import get_logger

log = get_logger("API")


class ValidationFailed(HTTPException):
    """Input that parses but breaks a rule: 422 naming the field."""

    status_code = HTTP_422_UNPROCESSABLE_ENTITY

    def __init__(self, field: str, message: str) -> None:
        super().__init__(
            detail=f"Validation failed for '{field}': {message}",
            extra={"errorType": ErrorType.VALIDATION_ERROR.value, "field": field},
        )


def _validation_response(request: Request, exc: ValidationException) -> Response[dict[str, Any]]:
    problems = exc.extra if isinstance(exc.extra, list) else []
    fields = [str(p.get("key")) for p in problems if isinstance(p, dict) and p.get("key")]
    messages = [
        f"{p.get('key') or p.get('source') or 'request'}: {p.get('message')}" for p in problems if isinstance(p, dict)
    ]
    detail = "Validation failed: " + ("; ".join(messages) if messages else exc.detail)
    return Response(
        {"status_code": HTTP_422_UNPROCESSABLE_ENTITY, "detail": detail, "errorType": ErrorType.VALIDATION_ERROR.value,
         "fields": fields, "extra": problems},
        status_code=HTTP_422_UNPROCESSABLE_ENTITY,
    )


def _http_response(request: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"status_code": exc.status_code, "detail": exc.detail}
    if isinstance(exc.extra, dict):
        body.update(exc.extra)
    elif exc.extra:
        body["extra"] = exc.extra
    return Response(body, status_code=exc.status_code, headers=exc.headers)


def _unhandled_response(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    route = request.scope.get("path_template") or "unmatched"
    log.error("Unhandled API error", exc_info=exc, route=route, method=request.method)
    return Response(
        {"status_code": HTTP_500_INTERNAL_SERVER_ERROR, "detail": "Internal server error",
         "errorType": ErrorType.UNKNOWN_ERROR.value},
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


def _database_unavailable(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    log.error("Database unavailable", exc_info=exc, route=request.scope.get("path_template") or "unmatched")
    return Response(
        {"status_code": HTTP_503_SERVICE_UNAVAILABLE, "detail": "The database is unavailable; retry later.",
         "errorType": ErrorType.NETWORK_ERROR.value},
        status_code=HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"},
    )


def _unstorable_text(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    # Invalid UTF-8, lone surrogates or NUL cannot be stored as PostgreSQL text: the input is invalid.
    return Response(
        {"status_code": HTTP_422_UNPROCESSABLE_ENTITY,
         "detail": "Validation failed: the request contains bytes or characters that are not valid UTF-8 text",
         "errorType": ErrorType.VALIDATION_ERROR.value},
        status_code=HTTP_422_UNPROCESSABLE_ENTITY,
    )


def _too_deep(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    # msgspec refuses JSON nested past its recursion limit while decoding the body.
    return Response(
        {"status_code": HTTP_400_BAD_REQUEST, "detail": "The request body is nested too deeply",
         "errorType": ErrorType.VALIDATION_ERROR.value},
        status_code=HTTP_400_BAD_REQUEST,
    )


EXCEPTION_HANDLERS = {
    RecursionError: _too_deep,
    UnicodeError: _unstorable_text,
    psycopg.DataError: _unstorable_text,
    psycopg.OperationalError: _database_unavailable,
    PoolTimeout: _database_unavailable,
    ValidationException: _validation_response,
    HTTPException: _http_response,
    Exception: _unhandled_response,
}
