"""Admin metrics: exact aggregates over generations, credits and errors in a window, and the seed's health
indicators judged on them (the thresholds are :mod:`app.domain.thresholds`).

Reads combine the rollups of migration 003 (kept by triggers) with the deltas not folded into them
yet and, for a rolling window, the raw rows of its two partial edge hours, all in one statement (one
snapshot). So the numbers are exact at any window, and their cost does not grow with the table. Readers fold a
batch of deltas first (:func:`app.bookkeeping.fold_pending_deltas`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from psycopg import AsyncConnection

from app.domain.thresholds import (
    AVG_TIME_PER_POSE,
    QUEUE_DEPTH,
    REFUND_RATE,
    SUCCESS_RATE,
    HealthStatus,
    MetricsPeriod,
    ThresholdTable,
)

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Window:
    """``[start, end)``; its whole UTC hours come from the rollups, the two partial edges from raw rows."""

    start: datetime
    end: datetime

    @classmethod
    def ending_now(cls, period: MetricsPeriod, now: datetime | None = None) -> Window:
        """The period up to now, at millisecond precision so the reported bounds are the ones used."""
        end = (now or datetime.now(UTC)).astimezone(UTC)
        end = end.replace(microsecond=end.microsecond // 1000 * 1000)
        return cls(end - period.length, end)

    def params(self) -> dict[str, datetime]:
        full_from = _floor_hour(self.start)
        if full_from < self.start:
            full_from += HOUR
        full_to = _floor_hour(self.end)
        if full_from >= full_to:  # no whole hour inside: everything comes from raw rows
            full_from = full_to = self.end
        return {"start": self.start, "end": self.end, "full_from": full_from, "full_to": full_to}


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def rounded(value: Decimal | int, places: int = 2) -> float:
    """Half-up rounding of an exact value (not binary floating point's half-even surprises)."""
    return float(Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def percent(part: int, whole: int) -> float:
    """``part / whole x 100`` to two decimals; 0 when there is no whole."""
    return rounded(Decimal(part) * 100 / Decimal(whole)) if whole else 0.0


@dataclass(frozen=True)
class WindowTotals:
    """Exact sums over the generations created in a window and the ledger rows written in it."""

    generations: int
    queued: int
    processing: int
    completed: int
    failed: int
    poses_requested: int
    poses_delivered: int
    duration_sum_ms: int
    duration_count: int
    pose_duration_sum_ms: int
    pose_duration_count: int
    credits_charged: int
    credits_refunded: int

    @property
    def active(self) -> int:
        return self.queued + self.processing

    @property
    def avg_generation_ms(self) -> int:
        return _half_up_int(self.duration_sum_ms, self.duration_count)

    @property
    def avg_poses_per_generation(self) -> float:
        return rounded(Decimal(self.poses_requested) / self.generations) if self.generations else 0.0

    @property
    def success_rate(self) -> float:
        """Completed out of all generations of the window, in-flight ones included (the seed's field)."""
        return percent(self.completed, self.generations)


def _half_up_int(total: int, count: int) -> int:
    return int((Decimal(total) / count).quantize(Decimal(1), rounding=ROUND_HALF_UP)) if count else 0


# Each part sums the same columns; the LATERAL pose lookups stay index scans however many edge rows.
_WINDOW_TOTALS_SQL = """
WITH edge AS MATERIALIZED (
    SELECT id, status, poses_count, duration_ms FROM generations
     WHERE created_at >= %(start)s AND created_at < %(full_from)s
    UNION ALL
    SELECT id, status, poses_count, duration_ms FROM generations
     WHERE created_at >= %(full_to)s AND created_at < %(end)s
), parts AS (
    SELECT count(*) AS generations, count(*) FILTER (WHERE status = 'queued') AS queued,
           count(*) FILTER (WHERE status = 'processing') AS processing,
           count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE status = 'failed') AS failed, sum(poses_count) AS poses_requested,
           0 AS poses_delivered, sum(duration_ms) AS duration_sum_ms, count(duration_ms) AS duration_count,
           0 AS pose_duration_sum_ms, 0 AS pose_duration_count
      FROM edge
    UNION ALL
    SELECT 0, 0, 0, 0, 0, 0, sum(p.delivered), 0, 0, sum(p.pose_ms), sum(p.pose_n)
      FROM edge CROSS JOIN LATERAL (
          SELECT count(*) FILTER (WHERE gp.status = 'completed') AS delivered, sum(gp.duration_ms) AS pose_ms,
                 count(gp.duration_ms) AS pose_n
            FROM generation_poses gp WHERE gp.generation_id = edge.id) p
    UNION ALL
    SELECT sum(generations), sum(queued), sum(processing), sum(completed), sum(failed), sum(poses_requested),
           sum(poses_delivered), sum(duration_sum_ms), sum(duration_count), sum(pose_duration_sum_ms),
           sum(pose_duration_count)
      FROM metrics_generation_hourly WHERE hour >= %(full_from)s AND hour < %(full_to)s
    UNION ALL
    SELECT sum(generations), sum(queued), sum(processing), sum(completed), sum(failed), sum(poses_requested),
           sum(poses_delivered), sum(duration_sum_ms), sum(duration_count), sum(pose_duration_sum_ms),
           sum(pose_duration_count)
      FROM metrics_generation_deltas WHERE hour >= %(full_from)s AND hour < %(full_to)s
), credits AS (
    SELECT kind, amount FROM credit_ledger
     WHERE created_at >= %(start)s AND created_at < %(full_from)s AND kind IN ('charge', 'refund')
    UNION ALL
    SELECT kind, amount FROM credit_ledger
     WHERE created_at >= %(full_to)s AND created_at < %(end)s AND kind IN ('charge', 'refund')
    UNION ALL
    SELECT 'charge', charged FROM metrics_credit_hourly WHERE hour >= %(full_from)s AND hour < %(full_to)s
    UNION ALL
    SELECT 'refund', refunded FROM metrics_credit_hourly WHERE hour >= %(full_from)s AND hour < %(full_to)s
    UNION ALL
    SELECT 'charge', charged FROM metrics_credit_deltas WHERE hour >= %(full_from)s AND hour < %(full_to)s
    UNION ALL
    SELECT 'refund', refunded FROM metrics_credit_deltas WHERE hour >= %(full_from)s AND hour < %(full_to)s
)
SELECT coalesce(sum(generations), 0)::bigint, coalesce(sum(queued), 0)::bigint,
       coalesce(sum(processing), 0)::bigint, coalesce(sum(completed), 0)::bigint,
       coalesce(sum(failed), 0)::bigint, coalesce(sum(poses_requested), 0)::bigint,
       coalesce(sum(poses_delivered), 0)::bigint, coalesce(sum(duration_sum_ms), 0)::bigint,
       coalesce(sum(duration_count), 0)::bigint, coalesce(sum(pose_duration_sum_ms), 0)::bigint,
       coalesce(sum(pose_duration_count), 0)::bigint,
       (SELECT coalesce(sum(amount) FILTER (WHERE kind = 'charge'), 0)::bigint FROM credits),
       (SELECT coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0)::bigint FROM credits)
  FROM parts
"""


async def window_totals(conn: AsyncConnection, window: Window) -> WindowTotals:
    """Totals over generations created in ``[start, end)`` and ledger charges/refunds written in it."""
    cur = await conn.execute(_WINDOW_TOTALS_SQL, window.params())
    row = await cur.fetchone()
    assert row is not None
    return WindowTotals(*(int(v) for v in row))


@dataclass(frozen=True)
class UserUsage:
    user_id: str
    generations: int
    completed: int
    poses_delivered: int

    @property
    def success_rate(self) -> float:
        return percent(self.completed, self.generations)


# Users with unfolded deltas are merged exactly; every other user's rollup row is final, so the
# top of the rank index (skipping those users) is all that needs reading.
_TOP_USERS_SQL = """
WITH pending AS MATERIALIZED (
    SELECT user_id, sum(generations) AS generations, sum(completed) AS completed,
           sum(poses_delivered) AS poses_delivered
      FROM metrics_generation_deltas GROUP BY user_id
), candidates AS (
    SELECT p.user_id, coalesce(u.generations, 0) + p.generations AS generations,
           coalesce(u.completed, 0) + p.completed AS completed,
           coalesce(u.poses_delivered, 0) + p.poses_delivered AS poses_delivered
      FROM pending p LEFT JOIN metrics_user_totals u USING (user_id)
    UNION ALL
    (SELECT u.user_id, u.generations, u.completed, u.poses_delivered
       FROM metrics_user_totals u
      WHERE u.user_id NOT IN (SELECT user_id FROM pending)
      ORDER BY u.generations DESC, u.user_id COLLATE "C" LIMIT %(limit)s)
)
SELECT user_id, generations::bigint, completed::bigint, poses_delivered::bigint FROM candidates
 WHERE generations > 0
 ORDER BY generations DESC, user_id COLLATE "C" LIMIT %(limit)s
"""


async def top_users(conn: AsyncConnection, limit: int) -> list[UserUsage]:
    """All-time: users with the most generations first, ties by user id (byte order)."""
    cur = await conn.execute(_TOP_USERS_SQL, {"limit": limit})
    return [UserUsage(r[0], int(r[1]), int(r[2]), int(r[3])) for r in await cur.fetchall()]


@dataclass(frozen=True)
class PoseUsage:
    pose_id: str
    name: str
    category: str
    slots: int


_POPULAR_POSES_SQL = """
SELECT p.pose_id, p.name, p.category, u.slots::bigint
  FROM (SELECT pose_id, sum(slots) AS slots
          FROM (SELECT pose_id, slots FROM metrics_pose_usage
                UNION ALL SELECT pose_id, slots FROM metrics_pose_deltas) s
         GROUP BY pose_id) u
  JOIN poses p USING (pose_id)
 WHERE u.slots > 0
 ORDER BY u.slots DESC, p.pose_id COLLATE "C" LIMIT %(limit)s
"""


async def popular_poses(conn: AsyncConnection, limit: int) -> list[PoseUsage]:
    """All-time: poses by how many generation pose slots used them, most first, ties by pose id."""
    cur = await conn.execute(_POPULAR_POSES_SQL, {"limit": limit})
    return [PoseUsage(r[0], r[1], r[2], int(r[3])) for r in await cur.fetchall()]


@dataclass(frozen=True)
class ErrorCount:
    error_type: str
    events: int
    last_occurred: datetime


_ERRORS_ALL_TIME_SQL = """
SELECT c.error_type, c.events::bigint,
       (SELECT max(e.occurred_at) FROM error_events e WHERE e.error_type = c.error_type)
  FROM (SELECT error_type, sum(events) AS events
          FROM (SELECT error_type, events FROM metrics_error_totals
                UNION ALL SELECT error_type, events FROM metrics_error_deltas) s
         GROUP BY error_type) c
 WHERE c.events > 0
 ORDER BY c.events DESC, c.error_type
"""

_ERRORS_IN_WINDOW_SQL = """
SELECT c.error_type, c.events::bigint,
       (SELECT max(e.occurred_at) FROM error_events e
         WHERE e.error_type = c.error_type AND e.occurred_at >= %(start)s AND e.occurred_at < %(end)s)
  FROM (SELECT error_type, sum(events) AS events
          FROM (SELECT error_type, events FROM metrics_error_hourly
                 WHERE hour >= %(full_from)s AND hour < %(full_to)s
                UNION ALL
                SELECT error_type, events FROM metrics_error_deltas
                 WHERE hour >= %(full_from)s AND hour < %(full_to)s
                UNION ALL
                SELECT error_type, 1 FROM error_events
                 WHERE occurred_at >= %(start)s AND occurred_at < %(full_from)s
                UNION ALL
                SELECT error_type, 1 FROM error_events
                 WHERE occurred_at >= %(full_to)s AND occurred_at < %(end)s) s
         GROUP BY error_type) c
 WHERE c.events > 0
 ORDER BY c.events DESC, c.error_type
"""


async def error_counts(conn: AsyncConnection, window: Window | None) -> list[ErrorCount]:
    """Recorded errors per type, most frequent first (ties by type): all time, or in ``window``."""
    if window is None:
        cur = await conn.execute(_ERRORS_ALL_TIME_SQL)
    else:
        cur = await conn.execute(_ERRORS_IN_WINDOW_SQL, window.params())
    return [ErrorCount(r[0], int(r[1]), r[2]) for r in await cur.fetchall()]


# --- Health indicators: the seed's four threshold tables (app.domain.thresholds) judged on a window ---


@dataclass(frozen=True)
class Indicator:
    """One judged figure; ``value`` is None when the period has no data for it, which counts as good."""

    table: ThresholdTable
    value: float | None
    basis: str
    note: str | None = None

    @property
    def status(self) -> HealthStatus:
        return HealthStatus.GOOD if self.value is None else self.table.status(self.value)

    @property
    def label(self) -> str:
        return self.table.labels[self.status.severity]

    @property
    def action(self) -> str:
        return self.table.actions[self.status.severity]


NO_DATA = "no data is not a failure"


def health_indicators(totals: WindowTotals, queue_depth: int) -> list[Indicator]:
    """The four indicators, each judged on its displayed (rounded) value."""
    finished = totals.completed + totals.failed
    poses_timed = totals.pose_duration_count
    return [
        Indicator(SUCCESS_RATE, percent(totals.completed, finished) if finished else None,
                  "completed / finished (completed + failed) generations created in the period x 100",
                  None if finished else f"no finished generations in the period; {NO_DATA}"),
        Indicator(AVG_TIME_PER_POSE,
                  rounded(Decimal(totals.pose_duration_sum_ms) / 1000 / poses_timed) if poses_timed else None,
                  "mean duration of the finished poses of generations created in the period, seconds",
                  None if poses_timed else f"no finished poses in the period; {NO_DATA}"),
        Indicator(QUEUE_DEPTH, float(queue_depth), "jobs waiting + active in the queue now"),
        Indicator(REFUND_RATE, percent(totals.credits_refunded, totals.credits_charged)
                  if totals.credits_charged else None,
                  "credits refunded / credits charged in the period x 100",
                  None if totals.credits_charged else f"no credits charged in the period; {NO_DATA}"),
    ]


def overall_status(indicators: list[Indicator]) -> HealthStatus:
    return max((i.status for i in indicators), key=lambda s: s.severity, default=HealthStatus.GOOD)

