"""Every Prometheus endpoint (the API's /metrics-prometheus, the exporter's and a worker's /metrics) chooses its
exposition format by RFC 9110 content negotiation: weights, q=0, wildcards and parameters count, OpenMetrics only
when preferred to text, 406 when nothing is acceptable."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from app import API_PREFIX
from app.media_ranges import preferred
from tests.stack import Process, Stack, free_port, running_stack

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# What the scrapers send: Prometheus 2 (the Debian package's 2.42), and Prometheus 3 (UTF-8 names on).
PROMETHEUS_2 = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROMETHEUS_3 = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
                "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
                "text/plain;version=0.0.4;q=0.2,*/*;q=0.1")
# Accept header -> the Content-Type the answer starts with, or 406.
CASES: dict[str | None, str | int] = {
    None: TEXT,
    "*/*": TEXT,
    "application/openmetrics-text;q=0, text/plain": TEXT,
    "text/plain;q=0.5, application/openmetrics-text;q=0.9": OPENMETRICS,
    "application/openmetrics-text, text/plain": TEXT,  # equal weights: the classic text
    "application/openmetrics-text": OPENMETRICS,
    "application/*": OPENMETRICS,
    "text/*;q=0.1, application/openmetrics-text;q=0": TEXT,
    "*/*;q=0.2, text/plain;q=0": OPENMETRICS,  # the specific range refuses text; the wildcard allows the rest
    "Application/OpenMetrics-Text; Version=1.0.0": OPENMETRICS,
    PROMETHEUS_2: OPENMETRICS,
    PROMETHEUS_3: f"{OPENMETRICS}; escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=allow-utf-8": "text/plain; version=1.0.0; charset=utf-8; escaping=allow-utf-8",
    "application/json": 406,
    "application/problem+json": 406,
    "*/*;q=0": 406,
    "text/plain;version=9.9.9, application/openmetrics-text;version=0.0.1": 406,  # versions not served
}


def test_the_most_specific_range_decides_and_q0_refuses() -> None:
    offers = ("text/plain; charset=utf-8", "text/html; charset=utf-8", "application/json")
    assert preferred("text/*;q=0.5, text/plain", offers) == "text/plain; charset=utf-8"
    assert preferred("text/*, text/plain;q=0", offers) == "text/html; charset=utf-8"
    assert preferred("text/*;q=0.3, application/json;q=0.4", offers) == "application/json"
    assert preferred("text/html;level=1", offers) is None  # a parameter the representation lacks
    assert preferred("text/html;charset=UTF-8;q=1.000", offers) == "text/html; charset=utf-8"
    assert preferred('text/plain;q=0.001;ext="a,b", application/json;q=0', offers) == "text/plain; charset=utf-8"
    assert preferred("nonsense, text/plain;q=2, */plain, application/json;q=0.5", offers) == "application/json"
    assert preferred("", offers) == preferred(None, offers) == offers[0]


@pytest.fixture(scope="module")
def endpoints(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The three metrics URLs of one stack: its API, its worker and an exporter, each answering."""
    with running_stack(template_db, tmp_path_factory.mktemp("negotiation"), workers=1) as stack:
        port = free_port()
        exporter = Process(["exporter", "--port", str(port)], stack.env, stack.tmp / "exporter.log")
        urls = {"api": f"{stack.base_url}{API_PREFIX}/metrics-prometheus",
                "exporter": f"http://127.0.0.1:{port}/metrics",
                "worker": f"http://127.0.0.1:{stack.workers[0].metrics_port}/metrics"}
        try:
            wait_answering(stack, exporter, urls)
            yield urls
        finally:
            exporter.stop()


def wait_answering(stack: Stack, exporter: Process, urls: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    waiting = dict(urls)
    while waiting and time.monotonic() < deadline:
        for name, url in list(waiting.items()):
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    del waiting[name]
            except httpx.HTTPError:
                pass
        assert exporter.alive(), exporter.output()
        time.sleep(0.1)
    assert not waiting, f"not answering: {waiting}\n{exporter.output()[-2000:]}\n{stack.logs()}"


@pytest.mark.parametrize("endpoint", ["api", "exporter", "worker"])
def test_each_metrics_endpoint_negotiates_its_format(endpoints: dict[str, str], endpoint: str) -> None:
    wrong: dict[str | None, str] = {}
    for accept, expected in CASES.items():
        answer = httpx.get(endpoints[endpoint], headers={} if accept is None else {"Accept": accept}, timeout=10)
        if expected == 406:
            if answer.status_code != 406:
                wrong[accept] = f"{answer.status_code} {answer.headers.get('content-type')}"
            continue
        content_type = answer.headers.get("content-type", "")
        openmetrics = content_type.startswith("application/openmetrics-text")
        if (answer.status_code != 200 or not content_type.startswith(str(expected))
                or answer.text.endswith("# EOF\n") != openmetrics or "pose_build_info" not in answer.text):
            wrong[accept] = f"{answer.status_code} {content_type}"
    assert wrong == {}
