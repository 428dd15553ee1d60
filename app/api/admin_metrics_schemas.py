"""Response shapes of the admin metrics endpoints, field for field as the seed's JSON."""

from __future__ import annotations

import msgspec


class SystemMetrics(msgspec.Struct):
    totalGenerations: int
    activeGenerations: int
    completedGenerations: int
    failedGenerations: int
    avgGenerationTime: int
    avgPosesPerGeneration: float
    successRate: float
    queueDepth: int
    queueWaiting: int
    queueActive: int
    queueFailed: int
    totalPosesGenerated: int
    totalCreditsSpent: int
    totalCreditsRefunded: int
    startTime: str
    endTime: str


class TopUser(msgspec.Struct):
    userId: str
    generationCount: int
    totalPoses: int
    successRate: float


class TopUsers(msgspec.Struct):
    users: list[TopUser]


class PopularPose(msgspec.Struct):
    poseId: str
    name: str
    usageCount: int
    category: str


class PopularPoses(msgspec.Struct):
    poses: list[PopularPose]


class ErrorTypeCount(msgspec.Struct):
    errorType: str
    count: int
    lastOccurred: str


class ErrorAnalysis(msgspec.Struct):
    errors: list[ErrorTypeCount]


class HealthIndicatorView(msgspec.Struct):
    key: str
    name: str
    value: float | None  # None: no data in the period (judged good, with a note)
    unit: str
    status: str
    label: str
    action: str
    thresholds: str
    basis: str
    note: str | None


class HealthIndicatorsView(msgspec.Struct):
    status: str
    period: str
    startTime: str
    endTime: str
    indicators: list[HealthIndicatorView]
