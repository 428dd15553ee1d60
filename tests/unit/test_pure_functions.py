"""Pure functions of the top-level modules and the domain, in-process: connection strings, content negotiation,
timestamps, job naming, error classification, the attempt time limit, the seed's threshold tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest

from app.db.conninfo import database_problem, describe_database_url
from app.domain.processing import (
    GENERATION_SLACK_SECONDS,
    POSE_OVERHEAD_SECONDS,
    generation_time_limit_seconds,
    pose_deadline_seconds,
)
from app.domain.thresholds import QUEUE_DEPTH, SUCCESS_RATE, HealthStatus
from app.errors import ErrorType, StorageError, classify
from app.media_ranges import parse_accept, preferred, weight
from app.queue import generation_job, job_id_for
from app.timestamps import iso_or_none, iso_timestamp

METRICS = ["text/plain; version=0.0.4; charset=utf-8", "application/openmetrics-text; version=1.0.0; charset=utf-8"]


# --- app/db/conninfo.py ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "described"), [
    ("postgresql://alice:pw@db.example:6543/posegen", "alice@db.example:6543/posegen"),
    ("dbname=x", "local socket:5432/x"),
    ("host=h port=5433 user=bob password=pw dbname=d", "bob@h:5433/d"),
    ("postgresql://[::1", "DATABASE_URL (unparsable)"),
])
def test_a_database_url_is_described_without_its_password(url: str, described: str) -> None:
    assert describe_database_url(url) == described
    assert "pw" not in describe_database_url(url)


def test_a_database_problem_is_one_line_in_libpqs_words() -> None:
    error = Exception('connection failed: role "a"\n\tdoes not exist')
    assert database_problem("postgresql://a:pw@h/db", error) == 'PostgreSQL at a@h:5432/db: role "a" does not exist'


# --- app/media_ranges.py --------------------------------------------------------------------------------------
def test_the_highest_weight_wins_and_a_tie_keeps_the_servers_order() -> None:
    assert preferred("text/plain;q=0.5, application/openmetrics-text", METRICS) == METRICS[1]
    assert preferred("text/plain, application/openmetrics-text", METRICS) == METRICS[0]
    assert preferred("*/*", METRICS) == METRICS[0]


def test_no_accept_takes_the_first_and_an_unacceptable_one_takes_none() -> None:
    assert preferred(None, METRICS) == METRICS[0] and preferred("  ", METRICS) == METRICS[0]
    assert preferred("application/json", METRICS) is None
    assert preferred("*/*;q=0", METRICS) is None


def test_the_most_specific_range_decides_the_weight() -> None:
    ranges = parse_accept("text/*;q=0.3, text/plain;q=0.9, */*;q=0.1")
    assert weight(ranges, "text/plain") == 0.9
    assert weight(ranges, "text/html") == 0.3
    assert weight(ranges, "image/png") == 0.1


def test_members_that_are_no_media_range_are_left_out() -> None:
    assert [(r.type, r.subtype) for r in parse_accept("garbage, text/plain, ;;, a/b")] == [("text", "plain"),
                                                                                         ("a", "b")]


# --- app/timestamps.py ----------------------------------------------------------------------------------------
def test_timestamps_are_utc_with_milliseconds_and_z() -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert iso_timestamp(moment) == "2024-05-06T05:08:09.123Z"
    assert iso_or_none(None) is None
    assert iso_timestamp().endswith("Z")
    assert abs(datetime.fromisoformat(iso_timestamp()) - datetime.now(UTC)) < timedelta(seconds=5)


# --- app/queue.py ---------------------------------------------------------------------------------------------
def test_an_attempts_job_is_named_by_generation_and_attempt() -> None:
    assert job_id_for("gen_abc", 2) == "gen_abc-a2"
    data = generation_job("gen_abc", 3)
    assert data.job_id == "gen_abc-a3" and data.args == ("gen_abc", 3)
    assert "gen_abc" in data.description and "3" in data.description


# --- app/errors.py --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("exc", "error_type"), [
    (StorageError("disk full"), ErrorType.STORAGE_ERROR),
    (TimeoutError(), ErrorType.TIMEOUT_ERROR),
    (httpx.ReadTimeout("slow"), ErrorType.TIMEOUT_ERROR),
    (httpx.ConnectError("refused"), ErrorType.NETWORK_ERROR),
    (ConnectionResetError(), ErrorType.NETWORK_ERROR),
    (KeyError("x"), ErrorType.UNKNOWN_ERROR),
])
def test_every_exception_maps_to_one_seed_error_type(exc: BaseException, error_type: ErrorType) -> None:
    assert classify(exc) is error_type


# --- app/domain/processing.py ---------------------------------------------------------------------------------
def test_an_attempts_time_limit_is_its_rounds_of_pose_deadlines_plus_slack() -> None:
    assert pose_deadline_seconds(300) == 300 + POSE_OVERHEAD_SECONDS
    # 10 poses, 8 at a time: two rounds.
    assert generation_time_limit_seconds(300, 10, 8) == 2 * (300 + POSE_OVERHEAD_SECONDS) + GENERATION_SLACK_SECONDS
    assert generation_time_limit_seconds(300, 8, 8) == 1 * (300 + POSE_OVERHEAD_SECONDS) + GENERATION_SLACK_SECONDS
    assert generation_time_limit_seconds(10, 3, 1) == 3 * (10 + POSE_OVERHEAD_SECONDS) + GENERATION_SLACK_SECONDS


# --- app/domain/thresholds.py ---------------------------------------------------------------------------------
def test_threshold_tables_judge_values_on_their_side() -> None:
    assert SUCCESS_RATE.higher_is_better and not QUEUE_DEPTH.higher_is_better
    assert SUCCESS_RATE.status(SUCCESS_RATE.good + 1) is HealthStatus.GOOD
    assert SUCCESS_RATE.status(SUCCESS_RATE.good) is HealthStatus.WARNING  # the good range is strict
    assert SUCCESS_RATE.status(SUCCESS_RATE.critical - 1) is HealthStatus.CRITICAL
    assert QUEUE_DEPTH.status(QUEUE_DEPTH.good - 1) is HealthStatus.GOOD
    assert QUEUE_DEPTH.status(QUEUE_DEPTH.critical + 1) is HealthStatus.CRITICAL
    assert HealthStatus.CRITICAL.severity > HealthStatus.WARNING.severity > HealthStatus.GOOD.severity
