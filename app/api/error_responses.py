"""How errors leave the API: RFC 9457 problem details (``application/problem+json``).

Every 4xx names the problem in ``detail`` (the text clients and tests read) and carries the seed's
``errorType`` where one applies; 5xx are logged and generic. The body is :class:`ProblemDetail`, the
schema every error response in the OpenAPI document points to. Litestar's ``ProblemDetailsPlugin``
handles a :class:`~litestar.plugins.problem_details.ProblemDetailsException` raised anywhere; the
handlers here turn every other exception into one, every :class:`~app.errors.DomainError` by one mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import psycopg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import ProblemDetailsException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_402_PAYMENT_REQUIRED,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from psycopg_pool import PoolTimeout

from app import APP_NAME
from app.errors import DomainError, ErrorType, validation_detail
from app.observability.logging import get_logger

log = get_logger("API")

PROBLEM_JSON = "application/problem+json"
# Seconds a client should wait before retrying a 503 (a dependency is down; it usually comes back soon).
RETRY_AFTER_UNAVAILABLE = "5"
# The status of a refused request, by the seed error type of its DomainError.
DOMAIN_ERROR_STATUS = {ErrorType.VALIDATION_ERROR: HTTP_422_UNPROCESSABLE_ENTITY,
                       ErrorType.CREDIT_ERROR: HTTP_402_PAYMENT_REQUIRED}


class ValidationFailed(HTTPException):
    """Input that parses but breaks a rule: 422 naming the field."""

    status_code = HTTP_422_UNPROCESSABLE_ENTITY

    def __init__(self, field: str, message: str) -> None:
        super().__init__(
            detail=validation_detail(field, message),
            extra={"errorType": ErrorType.VALIDATION_ERROR.value, "field": field, "fields": [field]},
        )


def problem(request: Request, status: int, detail: str, *, headers: dict[str, str] | None = None,
            **members: Any) -> Response[dict[str, Any]]:
    """An ``application/problem+json`` answer: ``type`` about:blank, ``title`` the status phrase, ``status``,
    ``detail``, plus the extension ``members`` (``errorType``, ``field``...) that are not None."""
    return ProblemDetailsException(
        detail=detail, status_code=status, headers=headers, type_="about:blank", title=HTTPStatus(status).phrase,
        extra={name: value for name, value in members.items() if value is not None},
    ).to_response(request)


def _validation_response(request: Request, exc: ValidationException) -> Response[dict[str, Any]]:
    problems = [p for p in exc.extra if isinstance(p, dict)] if isinstance(exc.extra, list) else []
    fields = [str(p["key"]) for p in problems if p.get("key")]
    messages = [f"{p.get('key') or p.get('source') or 'request'}: {p.get('message')}" for p in problems]
    detail = "Validation failed: " + ("; ".join(messages) if messages else exc.detail)
    invalid = [{"name": str(p.get("key") or p.get("source") or "request"), "reason": str(p.get("message")),
                "location": str(p.get("source") or "body")} for p in problems]
    return problem(request, HTTP_422_UNPROCESSABLE_ENTITY, detail, errorType=ErrorType.VALIDATION_ERROR.value,
                   fields=fields, invalidParams=invalid)


def _http_response(request: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    members = dict(exc.extra) if isinstance(exc.extra, dict) else {}
    headers = dict(exc.headers or {})
    if exc.status_code == HTTP_401_UNAUTHORIZED:
        # RFC 9110 11.6.1: a 401 says how to authenticate; RFC 6750 3: a bearer token that was sent and
        # refused is an invalid_token.
        sent = any(name == b"authorization" for name, _ in request.scope["headers"])
        challenge = f'Bearer realm="{APP_NAME}"' + (', error="invalid_token"' if sent else "")
        headers.setdefault("WWW-Authenticate", challenge)
    return problem(request, exc.status_code, exc.detail, headers=headers, **members)


def _domain_response(request: Request, exc: DomainError) -> Response[dict[str, Any]]:
    fields: dict[str, Any] = {"field": exc.field, "fields": [exc.field]} if exc.field else {}
    return problem(request, DOMAIN_ERROR_STATUS[exc.error_type], exc.detail, errorType=exc.error_type.value,
                   **fields, **exc.facts())


def _unhandled_response(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    route = request.scope.get("path_template") or "unmatched"
    log.error("Unhandled API error", exc_info=exc, route=route, method=request.method)
    return problem(request, HTTP_500_INTERNAL_SERVER_ERROR, "Internal server error",
                   errorType=ErrorType.UNKNOWN_ERROR.value)


def _database_unavailable(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    log.error("Database unavailable", exc_info=exc, route=request.scope.get("path_template") or "unmatched")
    return problem(request, HTTP_503_SERVICE_UNAVAILABLE, "The database is unavailable; retry later.",
                   headers={"Retry-After": RETRY_AFTER_UNAVAILABLE}, errorType=ErrorType.NETWORK_ERROR.value)


def _unstorable_text(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    # Invalid UTF-8, lone surrogates or NUL cannot be stored as PostgreSQL text: the input is invalid.
    return problem(request, HTTP_422_UNPROCESSABLE_ENTITY,
                   "Validation failed: the request contains bytes or characters that are not valid UTF-8 text",
                   errorType=ErrorType.VALIDATION_ERROR.value)


def _too_deep(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    # msgspec refuses JSON nested past its recursion limit while decoding the body.
    return problem(request, HTTP_400_BAD_REQUEST, "The request body is nested too deeply",
                   errorType=ErrorType.VALIDATION_ERROR.value)


EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Any], Response[dict[str, Any]]]] = {
    RecursionError: _too_deep,
    UnicodeError: _unstorable_text,
    psycopg.DataError: _unstorable_text,
    psycopg.OperationalError: _database_unavailable,
    # A server fenced read-only (a demoted primary, default_transaction_read_only) refuses writes: an outage
    # of the primary, not a bug; the pool drops that connection (app.api.app) and libpq finds the read-write one.
    psycopg.errors.ReadOnlySqlTransaction: _database_unavailable,
    PoolTimeout: _database_unavailable,
    ValidationException: _validation_response,
    HTTPException: _http_response,
    DomainError: _domain_response,
    Exception: _unhandled_response,
}
