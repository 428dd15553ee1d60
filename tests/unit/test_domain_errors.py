"""Every DomainError leaves the API through one mapping, as the problem details the seed's clients read."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import pytest
from litestar import get
from litestar.plugins.problem_details import ProblemDetailsPlugin
from litestar.testing import create_test_client

import app
from app.api.error_responses import DOMAIN_ERROR_STATUS, EXCEPTION_HANDLERS
from app.domain.credits import InsufficientCreditsError
from app.domain.generation_search import BadCursorError
from app.domain.generations import IdempotencyKeyReusedError, UnknownPosesError
from app.domain.retries import MAX_GENERATIONS_PER_RETRY, TooManyGenerationsError
from app.errors import DomainError

CASES: list[tuple[DomainError, int, dict[str, Any]]] = [
    (InsufficientCreditsError(balance=5, required=30), 402,
     {"detail": "Insufficient credits: 30 required, balance 5", "errorType": "CREDIT_ERROR", "required": 30,
      "balance": 5}),
    (UnknownPosesError(["p_9", "p_10"]), 422,
     {"detail": "Validation failed for 'poseIds': unknown pose ids: p_9, p_10", "errorType": "VALIDATION_ERROR",
      "field": "poseIds", "fields": ["poseIds"]}),
    (IdempotencyKeyReusedError("k1", "gen_1"), 422,
     {"detail": "Idempotency-Key 'k1' was already used for a different request (generation gen_1: other poses or "
                "prompt); use a new key for a new request", "errorType": "VALIDATION_ERROR",
      "field": "Idempotency-Key", "fields": ["Idempotency-Key"]}),
    (TooManyGenerationsError(MAX_GENERATIONS_PER_RETRY + 1), 422,
     {"detail": f"Validation failed for 'filter': the filter matches {MAX_GENERATIONS_PER_RETRY + 1} retryable "
                f"generations; at most {MAX_GENERATIONS_PER_RETRY} per retry: narrow it (e.g. a created or "
                "finished window)", "errorType": "VALIDATION_ERROR", "field": "filter", "fields": ["filter"]}),
    (BadCursorError("cursor is not one this API returned"), 422,
     {"detail": "Validation failed for 'cursor': cursor is not one this API returned",
      "errorType": "VALIDATION_ERROR", "field": "cursor", "fields": ["cursor"]}),
]


@pytest.mark.parametrize(("error", "status", "members"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_a_domain_error_is_answered_as_problem_details(error: DomainError, status: int,
                                                       members: dict[str, Any]) -> None:
    @get("/refused", sync_to_thread=False)
    def refused() -> None:
        raise error

    with create_test_client([refused], exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
                            plugins=[ProblemDetailsPlugin()]) as client:
        response = client.get("/refused")
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    title = {402: "Payment Required", 422: "Unprocessable Entity"}[status]
    assert response.json() == {"type": "about:blank", "title": title, "status": status, **members}


def _domain_errors() -> set[type[DomainError]]:
    """Every subclass of DomainError that a module of app/ defines (each module imported first)."""
    for module in pkgutil.walk_packages(app.__path__, "app."):
        importlib.import_module(module.name)
    found: set[type[DomainError]] = set()
    pending = [DomainError]
    while pending:
        for subclass in pending.pop().__subclasses__():
            found.add(subclass)
            pending.append(subclass)
    return found


def test_every_domain_error_has_a_status_and_a_case_here() -> None:
    """A DomainError whose error type the mapping has no status for would fail inside the handler, a bare 500;
    one without a case above is answered as nobody checked."""
    errors = _domain_errors()
    assert errors, "no DomainError subclass found"
    unmapped = {error.__name__ for error in errors if error.error_type not in DOMAIN_ERROR_STATUS}
    assert not unmapped, f"no status in DOMAIN_ERROR_STATUS for the error type of {unmapped}"
    untested = {error.__name__ for error in errors} - {type(case[0]).__name__ for case in CASES}
    assert not untested, f"add a case to CASES for {untested}"
