"""``posegen alerts backtest`` replays the alerts over a real Prometheus whose TSDB holds a known history.

The history is written as OpenMetrics and backfilled with ``promtool tsdb create-blocks-from
openmetrics``; Prometheus then starts on that TSDB (no scraping). Six hours of 100 generations an hour,
2% failing, with one hour at 30% failing: HighFailureRate (> 10% over an hour, for 5 minutes) must fire
from about 22 minutes into the bad hour until about 43 minutes after it; with the threshold overridden
to 20%, from about 44 minutes in until about 22 minutes after.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.stack import free_port
from tests.support.alerts import ROOT, require_tool
from tests.support.monitoring import Daemon, ready, wait_until

pytestmark = pytest.mark.tools

PER_MINUTE = 100 / 60
HOURS = 6
BAD_FROM, BAD_TO = 120, 180  # minutes into the history
SERIES = 'pose_generations_total{{job="posegen-exporter",instance="exporter:9108",status="{status}"}}'


# What a healthy scrape also records, flat: every job up, and each series the absent-series alert reads.
# Without them ScrapeJobAbsent (critical) and KeySeriesAbsent would fire over the whole history.
STEADY = [("up", "gauge", f'up{{job="{job}",instance="{job}:9108"}}', 1.0)
          for job in ("posegen-api", "posegen-worker", "posegen-exporter", "posegen-canary")] + [
    ("pose_canary_consecutive_failures", "gauge", 'pose_canary_consecutive_failures{job="posegen-canary"}', 0.0),
    ("pose_queue_jobs", "gauge", 'pose_queue_jobs{job="posegen-exporter",state="waiting"}', 0.0),
    ("pose_queue_depth", "gauge", 'pose_queue_depth{job="posegen-exporter"}', 0.0),
    ("pose_workers", "gauge", 'pose_workers{job="posegen-exporter"}', 2.0),
    ("pose_credits_refunded", "counter", 'pose_credits_refunded_total{job="posegen-exporter"}', 0.0),
    ("pose_generation_duration_seconds", "histogram", 'pose_generation_duration_seconds_count{job="posegen-exporter"}',
     0.0),
    ("pose_http_requests", "counter",
     'pose_http_requests_total{job="posegen-api",method="GET",route="/x",status_code="200"}', 0.0)]


def history(start: int) -> str:
    """OpenMetrics text, one sample a minute from ``start`` (unix seconds) for HOURS: the two generation
    counters, plus the flat :data:`STEADY` series."""
    completed = failed = 0.0
    rows: dict[str, list[str]] = {"completed": [], "failed": []}
    for minute in range(HOURS * 60 + 1):
        share = 0.30 if BAD_FROM <= minute < BAD_TO else 0.02
        if minute:
            completed += PER_MINUTE * (1 - share)
            failed += PER_MINUTE * share
        for status, value in (("completed", completed), ("failed", failed)):
            rows[status].append(f"{SERIES.format(status=status)} {value:.6f} {start + minute * 60}")
    families: dict[str, list[str]] = {}
    for name, kind, series, value in STEADY:
        family = families.setdefault(name, [f"# TYPE {name} {kind}"])
        family += [f"{series} {value} {start + minute * 60}" for minute in range(HOURS * 60 + 1)]
    return "\n".join(["# TYPE pose_generations counter", *rows["completed"], *rows["failed"],
                      *(line for family in families.values() for line in family), "# EOF", ""])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    promtool = require_tool("promtool", "prometheus")
    tmp: Path = tmp_path_factory.mktemp("backtest")
    start = (int(time.time()) // 60 - HOURS * 60 - 2) * 60
    (tmp / "history.om").write_text(history(start))
    backfill = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(tmp / "history.om"),
                               str(tmp / "tsdb")], capture_output=True, text=True, timeout=120)
    assert backfill.returncode == 0, backfill.stdout + backfill.stderr
    (tmp / "prometheus.yml").write_text("global:\n  evaluation_interval: 1m\n")
    port = free_port()
    daemon = Daemon([require_tool("prometheus", "prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
                     f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                    tmp / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until("Prometheus ready", lambda: ready(f"{url}/-/ready"), 60, daemon.output)
        def readable() -> list:
            query = {"query": "count(pose_generations_total)"}
            return httpx.get(f"{url}/api/v1/query", params=query, timeout=5).json()["data"]["result"]

        wait_until("backfilled history readable", readable, 30, daemon.output)
        yield url, start
    finally:
        daemon.stop()


def backtest(url: str, *extra: str) -> str:
    answer = subprocess.run([sys.executable, "-m", "app.cli", "alerts", "backtest", "--prometheus", url,
                             "--since", "7h", *extra], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    return answer.stdout


def windows(lines: list[str], alert: str) -> list[tuple[float, float]]:
    """Firing windows (unix seconds) listed under ``alert``'s row."""
    found, inside = [], False
    for line in lines:
        if not line.startswith("    "):
            inside = line.split() and line.split()[0] == alert
            continue
        if inside:
            start, end = re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line)
            found.append(tuple(datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
                               for t in (start, end)))
    return found


def assert_window(found: list[tuple[float, float]], start: int, fires: float, resolves: float) -> None:
    assert len(found) == 1, found
    began, ended = ((t - start) / 60 for t in found[0])
    assert abs(began - fires) <= 3 and abs(ended - resolves) <= 3, (began, ended, fires, resolves)


def test_backtest_finds_the_known_incident_and_judges_an_override(prometheus: tuple[str, int]) -> None:
    url, start = prometheus
    out = backtest(url, "--override", "HighFailureRate=0.2")
    before, _, override = out.partition("Override HighFailureRate: threshold 0.10 -> 0.2")
    assert override, out
    # The 1h failure ratio passes 10% once 17.1 minutes of the 30% hour are in the window, plus `for: 5m`;
    # it falls back under 10% 42.9 minutes after the hour.
    assert_window(windows(before.splitlines(), "HighFailureRate"), start, BAD_FROM + 17.1 + 5, BAD_TO + 42.9)
    # SuccessRateDegraded (success <= 95%, for 10m): 5.4 minutes in, until 53.6 minutes after.
    assert_window(windows(before.splitlines(), "SuccessRateDegraded"), start, BAD_FROM + 5.4 + 10, BAD_TO + 53.6)
    after = override.partition("after:")[2].splitlines()
    assert_window(windows(after, "HighFailureRate"), start, BAD_FROM + 38.6 + 5, BAD_TO + 21.4)
    assert re.search(r"^HighFailureRate\s+critical\s+1\s+", override.partition("after:")[0].split("before:")[1],
                     re.M), override
    # Quiet alerts are listed with no firing. The replay starts where the history does (about 6 h of the
    # 7 h asked for), so the hour before it raises no absent-series page.
    assert re.search(r"^QueueBacklog\s+warning\s+0\s+0\.00$", before, re.M), before
    assert re.search(r"^ScrapeJobAbsent\s+critical\s+0\s+0\.00$", before, re.M), before
    assert re.search(r"^KeySeriesAbsent\s+warning\s+0\s+0\.00$", before, re.M), before
    assert f"history begins {datetime.fromtimestamp(start, UTC):%Y-%m-%dT%H:%M}" in before.splitlines()[0], before
    pages = re.search(r"^pages \(critical firings\): (\d+) in ([\d.]+) days", before, re.M)
    assert pages and pages[1] == "1" and abs(float(pages[2]) * 1440 - HOURS * 60) <= 3, before


def test_a_bad_override_is_refused_with_one_line(prometheus: tuple[str, int]) -> None:
    url, _ = prometheus
    argv = [sys.executable, "-m", "app.cli", "alerts", "backtest", "--prometheus", url, "--override",
            "HighFailureRate=high"]
    answer = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert answer.returncode == 2
    assert answer.stderr.strip() == "error: --override 'HighFailureRate=high': expected ALERT=THRESHOLD with a number"


def test_for_and_keep_firing_for_are_emulated_like_the_rule_manager() -> None:
    """Pending for `for`, firing after; a gap shorter than keep_firing_for does not resolve it, and after
    the expression stops the alert resolves at the first evaluation keep_firing_for later."""
    from alerts.backtest import emulate

    grid = [float(t) for t in range(0, 1200, 60)]
    present = [t for t in grid if 120 <= t <= 480 or 600 <= t <= 720]  # a 2-minute gap at 540..599
    assert emulate(present, grid, for_seconds=300, keep_seconds=0) == [(420.0, 540.0)]
    assert emulate(present, grid, for_seconds=300, keep_seconds=180) == [(420.0, 960.0)]
    assert emulate(present, grid, for_seconds=600, keep_seconds=0) == []
    assert emulate([t for t in grid if t >= 600], grid, for_seconds=0, keep_seconds=0) == [(600.0, None)]


def test_recorded_series_are_replayed_from_their_rules() -> None:
    """A recorded series becomes its rule's expression; a range over one becomes a subquery."""
    from alerts.backtest import inline, override_threshold

    records = {"job:ratio": [{"expr": "sum(a) / sum(b)"}],
               "slo:err": [{"expr": "sum(c)", "labels": {"slo": "x"}}, {"expr": "sum(d)", "labels": {"slo": "y"}}]}
    replayed = inline("avg_over_time(job:ratio[15m]) > 0.9", records, "1m")
    assert replayed == "avg_over_time((sum(a) / sum(b))[15m:1m]) > 0.9"
    assert inline('slo:err{slo="y"} * 20 > 14.4', records) == "(sum(d)) * 20 > 14.4"
    overridden = override_threshold('slo:err{slo="y"} * 20 > 14.4 and on () n >= 10', 6)
    assert overridden == 'slo:err{slo="y"} * 20 > 6 and on () n >= 10'


@pytest.mark.parametrize(("argv", "problem"), [
    (["--step", "0s"], "--step 0s: must be at least 1s"),
    (["--since", "99999999d"], "--since 99999999d: at most 400d"),
    (["--since", "7d7d"], "duration '7d7d'"),
    (["--since", "1h", "--step", "2h"], "--step 2h is longer than --since 1h"),
    (["--override", "Watchdog=1"], "Watchdog has no numeric threshold to override"),
    (["--override", "HighFailureRate=nan"], "the threshold must be a finite number"),
    (["--override", "HighFailureRate=1e400"], "the threshold must be a finite number"),
])
def test_bad_ranges_and_overrides_are_refused_before_any_query(argv: list[str], problem: str) -> None:
    # No Prometheus answers at this address: each is refused before the first query.
    answer = subprocess.run([sys.executable, "-m", "app.cli", "alerts", "backtest", "--prometheus",
                             f"http://127.0.0.1:{free_port()}", *argv], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert answer.returncode == 2 and answer.stdout == "", answer.stdout + answer.stderr
    lines = answer.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0], answer.stderr
