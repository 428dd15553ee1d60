"""Timestamps as the API, the admin reads and the logs write them: ISO-8601 UTC with milliseconds and ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_timestamp(moment: datetime | None = None) -> str:
    """UTC time as ISO-8601 with milliseconds and ``Z``, as every timestamp in the API and logs."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def iso_or_none(moment: datetime | None) -> str | None:
    return iso_timestamp(moment) if moment is not None else None
