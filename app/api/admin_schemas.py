"""Request and response shapes of the operators' endpoints (``/admin/...``), camelCase like the rest."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from app.api.schemas import UserId

GenerationStatus = Literal["queued", "processing", "completed", "failed"]
# The seed's error types (app.errors.ErrorType; a test ties the two together).
ErrorTypeName = Literal["FLUX_API_ERROR", "STORAGE_ERROR", "CREDIT_ERROR", "TIMEOUT_ERROR", "NETWORK_ERROR",
                        "CONTROLNET_ERROR", "VALIDATION_ERROR", "UNKNOWN_ERROR"]
GenerationId = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]


class Attempt(msgspec.Struct):
    """One run of a generation: the original (asked for by the user) or an operator's retry."""

    run: int
    kind: Literal["original", "retry"]
    requestedBy: str
    requestedAt: str
    charged: bool
    credits: int
    auditId: int | None
    outcome: Literal["running", "completed", "failed"]
    posesCompleted: int
    posesFailed: int
    posesPending: int
    errorTypes: list[str]
    finishedAt: str | None


class AdminGenerationRow(msgspec.Struct):
    generationId: str
    userId: str
    status: str
    errorType: str | None
    errorMessage: str | None
    posesCount: int
    creditsCharged: int
    creditsRefunded: int
    createdAt: str
    finishedAt: str | None
    durationMs: int | None
    deliveries: int
    traceId: str | None
    sentryUrl: str | None
    attempts: list[Attempt]


class AdminGenerationPage(msgspec.Struct):
    generations: list[AdminGenerationRow]
    nextCursor: str | None
    limit: int


class GenerationFilterBody(msgspec.Struct, forbid_unknown_fields=True):
    """The same filter as ``GET /admin/generations``; windows are half-open [from, to)."""

    status: GenerationStatus | None = None
    errorType: ErrorTypeName | None = None
    userId: UserId | None = None
    createdFrom: datetime | None = None
    createdTo: datetime | None = None
    finishedFrom: datetime | None = None
    finishedTo: datetime | None = None
    # true: finished generations with at least one failed pose (failed, or completed with some poses failed).
    hasFailedPoses: bool | None = None


class RetryRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Retry the failed poses of one generation (``generationId``) or of those a ``filter`` matches."""

    charge: bool
    dryRun: bool = True
    generationId: GenerationId | None = None
    filter: GenerationFilterBody | None = None


class RefusedUser(msgspec.Struct):
    userId: str
    required: int
    balance: int


class RetryCounts(msgspec.Struct):
    generations: int
    poses: int
    users: int
    credits: int
    charge: bool
    refusedUsers: list[RefusedUser]


class AuditEntry(msgspec.Struct):
    id: int
    at: str
    actor: str
    action: str
    target: dict[str, Any]
    counts: dict[str, Any]
    idempotencyKey: str | None


class RetryAnswer(msgspec.Struct):
    dryRun: bool
    counts: RetryCounts
    audit: AuditEntry
    replayed: bool = False


class RetryProgress(msgspec.Struct):
    auditId: int
    total: int
    queued: int
    processing: int
    completed: int
    failed: int
    superseded: int


class PauseRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``intake``: POST /generations answers 503; ``workers``: drain (RQ suspension); ``all``: both."""

    scope: Literal["intake", "workers", "all"] = "intake"
    reason: Annotated[str, Meta(max_length=500)] = ""
    retryAfterSeconds: Annotated[int, Meta(ge=1, le=86_400)] = 300


class ResumeRequest(msgspec.Struct, forbid_unknown_fields=True):
    scope: Literal["intake", "workers", "all"] = "all"


class IntakeState(msgspec.Struct):
    paused: bool
    pausedBy: str | None = None
    pausedAt: float | None = None
    reason: str | None = None
    retryAfterSeconds: int | None = None


class PauseState(msgspec.Struct):
    intake: IntakeState
    workersPaused: bool
    # Registered workers by RQ state; drained when all are "suspended".
    workers: dict[str, int]
    audit: list[AuditEntry] = msgspec.field(default_factory=list)


class AuditPage(msgspec.Struct):
    entries: list[AuditEntry]
    nextBefore: int | None
