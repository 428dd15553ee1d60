"""The configuration reference is written from the settings' declarations: one row per variable read."""

from __future__ import annotations

import re

from app.settings import Declaration, Settings, declarations, render_configuration_table
from app.settings_reader import Reader, SettingsError


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


# Bounds as a meaning states them: "(1..200)", "(60 s to 30 days)", "(60 s to a day)".
RANGE = re.compile(r"(\d[\d.]*)\s*\.\.\s*(\d[\d.]*)")
SPAN = re.compile(r"(\d+) s to (a|\d+) (day|days|hour|hours|minute|minutes)\b")
UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def _stated_bounds(doc: str) -> tuple[float, float] | None:
    if match := RANGE.search(doc):
        return float(match[1]), float(match[2])
    if match := SPAN.search(doc):
        count = 1 if match[2] == "a" else int(match[2])
        return float(match[1]), float(count * UNIT_SECONDS[match[3].removesuffix("s")])
    return None


def _accepts(declaration: Declaration, name: str, value: float, kind: str) -> bool:
    raw = str(int(value)) if kind == "integer" else repr(value)
    try:
        declaration.read(Reader({name: raw}), name, None)
    except SettingsError:
        return False
    return True


def test_the_bounds_a_meaning_states_are_the_readers() -> None:
    """A meaning that states a range ("(1..200)", "(60 s to a day)") says what the reader accepts: both ends,
    and nothing past either (a bound changed in the reader alone fails here)."""
    kinds, checked = Settings.variables(), []
    for declaration, _ in declarations():
        variable = declaration.variables[0]
        bounds = _stated_bounds(variable.doc)
        if bounds is None or kinds[variable.name] not in ("integer", "number"):
            continue
        kind, (low, high) = kinds[variable.name], bounds
        step = 1.0 if kind == "integer" else max(abs(high), 1.0) * 1e-9
        assert _accepts(declaration, variable.name, low, kind), f"{variable.name} refuses {low:g}"
        assert _accepts(declaration, variable.name, high, kind), f"{variable.name} refuses {high:g}"
        assert not _accepts(declaration, variable.name, low - step, kind), f"{variable.name} takes below {low:g}"
        assert not _accepts(declaration, variable.name, high + step, kind), f"{variable.name} takes above {high:g}"
        checked.append(variable.name)
    assert {"POSEGEN_DB_POOL_SIZE", "POSEGEN_CONSOLE_IDLE_TIMEOUT_SECONDS", "SENTRY_TRACES_SAMPLE_RATE"} <= set(checked)
