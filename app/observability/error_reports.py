"""Failures reported to the error tracker (Sentry) and marked on the current trace span (Datadog).

Each helper returns at once when neither integration is on, without importing
either SDK. Events carry the tags on-call filters by: ``component``
(pose-generator), ``generationId``, ``errorType`` and the user id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.errors import ErrorType
from app.observability import tracing
from app.observability.sentry import SENTRY_COMPONENT, sentry_enabled

if TYPE_CHECKING:
    from sentry_sdk import Scope


def capture_pose_failure(
    exc: BaseException, generation_id: str, user_id: str, pose_id: str, error_type: ErrorType
) -> None:
    """One failed pose: a Sentry event of its exception, and its trace span marked as an error."""
    tracing.mark_error(exc, error_type.value)
    if not sentry_enabled():
        return
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        _tag_generation(scope, generation_id, user_id)
        scope.set_tag("errorType", error_type.value)
        scope.set_tag("poseId", pose_id)
        sentry_sdk.capture_exception(exc)


def capture_generation_failure(
    generation_id: str, user_id: str, attempt: int, pose_count: int, error_type: str | None
) -> None:
    """A generation that delivered no pose: one Sentry event per error type, besides its poses' events."""
    if not sentry_enabled():
        return
    import sentry_sdk

    kind = error_type or ErrorType.UNKNOWN_ERROR.value
    with sentry_sdk.new_scope() as scope:
        _tag_generation(scope, generation_id, user_id)
        scope.set_tag("errorType", kind)
        scope.set_context("generation", {"attempt": attempt, "poses": pose_count})
        scope.fingerprint = ["generation-failed", kind]
        sentry_sdk.capture_message(f"Generation failed: {kind}", level="error")


def tag_generation_job(generation_id: str, user_id: str) -> None:
    """Tag the job's scope, so an exception escaping the job (reported by the RQ integration) names it too."""
    if not sentry_enabled():
        return
    import sentry_sdk

    _tag_generation(sentry_sdk.get_current_scope(), generation_id, user_id)


def _tag_generation(scope: Scope, generation_id: str, user_id: str) -> None:
    scope.set_tag("component", SENTRY_COMPONENT)
    scope.set_tag("generationId", generation_id)
    scope.set_tag("userId", user_id)
    scope.set_user({"id": user_id})
