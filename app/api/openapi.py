"""OpenAPI descriptions of the error answers, so the schema tells clients what each route can return."""

from __future__ import annotations

from litestar.openapi.datastructures import ResponseSpec

from app.api.schemas import ErrorBody

_DESCRIPTIONS = {
    401: "Missing, malformed, expired or wrongly signed token",
    402: "Not enough credits; nothing was charged",
    403: "The caller's role may not use this endpoint",
    404: "Not found, or not the caller's",
    422: "Invalid input; the message names the field",
    503: "A dependency (the queue) is unavailable; nothing was charged",
}


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    return {
        code: ResponseSpec(data_container=ErrorBody, description=_DESCRIPTIONS[code], generate_examples=False)
        for code in codes
    }
