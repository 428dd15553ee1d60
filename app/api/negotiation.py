"""Content negotiation at the HTTP edge (RFC 9110 section 12): what a request may send and accept.

A middleware on the API's router, so it runs after routing (it knows the route) and before the body is
read: a request whose body is not JSON answers 415 and one that accepts none of the route's media types
406, before anything is done or charged for it. (A guard would do the same, but Litestar copies the
route handler for every guard call: a third more CPU per poll.)
"""

from __future__ import annotations

from typing import Any

from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_406_NOT_ACCEPTABLE, HTTP_415_UNSUPPORTED_MEDIA_TYPE
from litestar.types import ASGIApp, Receive, Scope, Send

from app.api.error_responses import PROBLEM_JSON
from app.media_ranges import preferred

JSON = "application/json"


def _header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), None)


def require_json_body(scope: Scope) -> None:
    """415 unless the body is declared ``application/json`` (or a ``+json`` type)."""
    declared = (_header(scope, b"content-type") or "").partition(";")[0].strip().lower()
    if declared != JSON and not (declared.startswith("application/") and declared.endswith("+json")):
        raise HTTPException(
            status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=f"The request body must be application/json, not {declared or 'undeclared'}",
            headers={"Accept-Post": JSON},
        )


def _representations(produces: list[str]) -> tuple[str, ...]:
    # Every answer of the API is UTF-8 (JSON is by definition, RFC 8259), so a range asking charset=utf-8 matches
    # a type declared without parameters; a type declared with its own (the Prometheus formats) stays as it is.
    return tuple(media if ";" in media else f"{media}; charset=utf-8" for media in [*produces, PROBLEM_JSON])


def require_acceptable(scope: Scope, handler: Any) -> None:
    """406 when an Accept header allows none of the route's media types (its ``media_type``, or the list in
    ``opt["produces"]`` for a route that negotiates itself) nor problem details, by RFC 9110's rules
    (:mod:`app.media_ranges`: weights, ``q=0`` refuses, the most specific range decides)."""
    accept = _header(scope, b"accept")
    if not accept:
        return
    declared = getattr(handler, "media_type", None) or JSON  # none declared: Litestar answers JSON
    produces = list(handler.opt.get("produces") or [str(getattr(declared, "value", declared))])
    if preferred(accept, _representations(produces)) is None:
        types = dict.fromkeys(media.partition(";")[0] for media in produces)
        raise HTTPException(
            status_code=HTTP_406_NOT_ACCEPTABLE,
            detail=f"This endpoint answers with {' or '.join(types)}; the Accept header ({accept}) allows none",
        )


def negotiation_middleware(app: ASGIApp) -> ASGIApp:
    """415 for a body that is not JSON on a route that takes one (a ``data`` parameter); 406 for an Accept
    header the route cannot satisfy."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = scope["route_handler"]
            data = handler.parsed_fn_signature.parameters.get("data")
            # A form route (the operators' console) declares its own encoding; JSON routes declare none.
            declared = getattr(data.kwarg_definition, "media_type", None) if data is not None else "none"
            if declared in (None, RequestEncodingType.JSON):
                require_json_body(scope)
            require_acceptable(scope, handler)
        await app(scope, receive, send)

    return middleware
