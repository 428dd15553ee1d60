"""Request and response shapes at the HTTP edge (msgspec structs, camelCase as the seed's JSON)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

MAX_PROMPT_LENGTH = 1000

# Ids are plain ASCII; anything else is refused at the edge with 422 rather than reaching SQL.
PoseId = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
UserId = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@-]+$")]


def create_generation_request_type(max_poses: int) -> type[msgspec.Struct]:
    """The body of ``POST /generations`` with at most ``max_poses`` poses (``POSEGEN_MAX_POSES``), so that
    validation and the OpenAPI schema both state the configured limit. Fields: ``poseIds``, ``prompt``."""
    return msgspec.defstruct(
        "CreateGenerationRequest",
        [("poseIds", Annotated[list[PoseId], Meta(min_length=1, max_length=max_poses)]),
         ("prompt", Annotated[str, Meta(min_length=1, max_length=MAX_PROMPT_LENGTH)])],
        forbid_unknown_fields=True, module=__name__,
    )


class GenerationAccepted(msgspec.Struct):
    generationId: str
    status: str
    creditsCharged: int
    createdAt: str


class PoseResult(msgspec.Struct):
    poseId: str
    status: str
    errorType: str | None
    imageUrl: str | None
    durationMs: int | None
    queueWaitMs: int | None
    providerMs: int | None
    uploadMs: int | None


class GenerationView(msgspec.Struct):
    generationId: str
    status: str
    prompt: str
    createdAt: str
    finishedAt: str | None
    durationMs: int | None
    creditsCharged: int
    creditsRefunded: int
    errorType: str | None
    poses: list[PoseResult]


class GenerationSummary(msgspec.Struct):
    generationId: str
    status: str
    prompt: str
    posesCount: int
    createdAt: str
    finishedAt: str | None
    durationMs: int | None
    creditsCharged: int
    creditsRefunded: int
    errorType: str | None


class GenerationPage(msgspec.Struct):
    generations: list[GenerationSummary]
    total: int
    limit: int
    offset: int


class Pose(msgspec.Struct):
    poseId: str
    name: str
    category: str
    keypoints: list[list[float]]


class PosePage(msgspec.Struct):
    poses: list[Pose]
    total: int


class LedgerEntry(msgspec.Struct):
    id: int
    kind: str
    amount: int
    balanceAfter: int
    generationId: str | None
    createdAt: str


class CreditAccount(msgspec.Struct):
    userId: str
    balance: int
    ledger: list[LedgerEntry]


class GrantRequest(msgspec.Struct, forbid_unknown_fields=True):
    userId: UserId
    amount: Annotated[int, Meta(ge=1, le=1_000_000_000)]


class GrantResult(msgspec.Struct):
    userId: str
    amount: int
    balance: int


class QueueCountsView(msgspec.Struct):
    """Job attempts in RQ's registries: ``active`` counts live executions only (a dead work-horse's is not
    running), ``failed`` only attempts that no later attempt of their generation replaced."""

    waiting: int
    active: int
    completed: int
    failed: int
    delayed: int


class DependencyCheck(msgspec.Struct, omit_defaults=True):
    status: str
    error: str | None = None


class QueueCheck(msgspec.Struct, omit_defaults=True):
    status: str
    counts: QueueCountsView | None = None
    error: str | None = None


class HealthChecks(msgspec.Struct):
    database: DependencyCheck
    redis: DependencyCheck
    queue: QueueCheck


class PausedView(msgspec.Struct):
    """A planned pause by an operator: not an outage, so health stays 200. Health answers anyone: the operator's
    reason stays on the admin surfaces (``GET /admin/pause``, the console, the audit log)."""

    intake: bool
    workers: bool


class FaultDrill(msgspec.Struct):
    """Whether this process injects failures (``POSEGEN_FAULTS``), and the fraction of poses per error type."""

    active: bool
    faults: dict[str, float]


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    timestamp: str
    app: str
    version: str
    checks: HealthChecks
    phase: str
    faultDrill: FaultDrill
    # Only while an operator has paused intake or workers (the seed's shape otherwise).
    paused: PausedView | None = None
    # Only after SIGTERM, in the shutdown delay (app/api/draining.py): the answer is 503 whatever the checks say.
    shuttingDown: bool | None = None


class InvalidParam(msgspec.Struct):
    """One input that failed validation (RFC 9457's "invalid-params" example, camelCase)."""

    name: str
    reason: str
    location: str


class ProblemDetail(msgspec.Struct, omit_defaults=True):
    """An error answer, RFC 9457 problem details (``application/problem+json``) with our extension members."""

    type: str
    title: str
    status: int
    detail: str
    errorType: str | None = None
    field: str | None = None
    fields: list[str] | None = None
    invalidParams: list[InvalidParam] | None = None
    required: int | None = None
    balance: int | None = None
