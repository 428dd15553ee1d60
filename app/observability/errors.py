"""Error tracking with Sentry: switched on by ``SENTRY_DSN``, no cost when off.

``init_sentry`` is called once per process; the capture helpers do nothing
unless a Sentry client is active.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sentry_sdk

from app.errors import ErrorType

if TYPE_CHECKING:
    from app.domain.processing import ClaimedGeneration

SENTRY_COMPONENT = "pose-generator"


def capture_pose_failure(
    exc: BaseException, claimed: ClaimedGeneration, pose_id: str, error_type: ErrorType
) -> None:
    if not sentry_sdk.get_client().is_active():
        return
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("component", SENTRY_COMPONENT)
        scope.set_tag("generationId", claimed.generation_id)
        scope.set_tag("errorType", error_type.value)
        scope.set_tag("poseId", pose_id)
        scope.set_user({"id": claimed.user_id})
        sentry_sdk.capture_exception(exc)
