"""The configuration reference is written from the settings' declarations: one row per variable read."""

from __future__ import annotations

import re

from app.settings import Settings, render_configuration_table


def _rows() -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split(" | ")]
            for line in render_configuration_table().splitlines() if line.startswith("| `")]


def test_the_table_lists_exactly_the_variables_the_settings_read() -> None:
    names = [re.fullmatch(r"`([A-Z][A-Z0-9_]+)`", row[0]).group(1) for row in _rows()]  # type: ignore[union-attr]
    assert len(names) == len(set(names)), "a variable is listed twice"
    assert set(names) == set(Settings.variables())


def test_every_row_has_a_default_and_a_meaning_grouped_under_an_area() -> None:
    table = render_configuration_table()
    assert table.startswith("### ") and table.count("| variable | default | meaning |") == table.count("### ")
    for row in _rows():
        assert len(row) == 3 and row[1] and row[2], row


def test_defaults_are_shown_as_the_settings_have_them() -> None:
    shown = {row[0].strip("`"): row[1] for row in _rows()}
    assert shown["POSEGEN_PRICE_PER_POSE"] == str(Settings.from_env({}).price_per_pose)
    assert shown["FLUX_TIMEOUT_SECONDS"] == "30" and shown["FLUX_WEBHOOKS"] == "`false`"
    assert shown["REDIS_URL"] == f"`{Settings().redis_url}`" and shown["SENTRY_DSN"] == "–"
