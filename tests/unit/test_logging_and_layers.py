"""JSON log entries of the seed's shape, in-process; and which sessions the data-safety plugin guards."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from app.observability.logging import bind_context, clear_context, configure_logging, get_logger
from tests.support.data_safety import UNIT_TESTS, needs_services


def entries(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_entry_has_the_seeds_shape_and_lower_levels_are_dropped() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream, "Worker")
    get_logger("Worker").info("hello", generationId="g1")
    get_logger("Worker").debug("not shown")
    (entry,) = entries(stream)
    assert set(entry) == {"timestamp", "level", "component", "message", "metadata"}
    assert (entry["level"], entry["component"], entry["message"]) == ("INFO", "Worker", "hello")
    assert entry["metadata"] == {"generationId": "g1"}
    assert str(entry["timestamp"]).endswith("Z")


def test_bound_context_reaches_every_entry_until_cleared() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream, "API")
    bind_context(generationId="g7")
    try:
        get_logger("API").warning("first")
    finally:
        clear_context()
    get_logger("API").warning("second")
    first, second = entries(stream)
    assert first["metadata"] == {"generationId": "g7"} and second["metadata"] in ({}, None)


def test_library_records_are_json_entries_of_the_process_component() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream, "Metrics")
    logging.getLogger("some.library").error("it broke")
    (entry,) = entries(stream)
    assert (entry["level"], entry["component"], entry["message"]) == ("ERROR", "Metrics", "it broke")


def test_an_unknown_component_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log component"):
        configure_logging("INFO", io.StringIO(), "Nope")


def test_only_a_session_with_a_test_outside_tests_unit_plants_the_data_safety_sentinel(tmp_path: Path) -> None:
    assert not needs_services([UNIT_TESTS / "test_a.py", UNIT_TESTS / "sub" / "test_b.py"])
    assert not needs_services([])
    assert needs_services([UNIT_TESTS / "test_a.py", UNIT_TESTS.parent / "test_exporter.py"])
    assert needs_services([tmp_path / "unit" / "test_a.py"])  # another folder named unit is not ours
