"""Timestamps at the HTTP edge: ISO-8601 UTC with milliseconds and ``Z``."""

from __future__ import annotations

from datetime import datetime

from app.observability.logging import iso_timestamp


def iso_or_none(moment: datetime | None) -> str | None:
    return iso_timestamp(moment) if moment is not None else None
