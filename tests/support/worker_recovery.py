"""Worker recovery helpers shared by several test files (moved out of tests/test_worker_recovery.py)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import Process, Stack, free_port


def scrape_exporter(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return scrape_exporter_once(stack.env, stack.tmp)


def scrape_exporter_once(env: dict[str, str], tmp: Path, timeout: float = 20
                         ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Start ``posegen exporter`` with ``env``, scrape it once (retrying for ``timeout`` seconds while it
    starts), stop it: ``{(name, sorted labels): value}`` of every sample."""
    port = free_port()
    exporter = Process(["exporter", "--port", str(port)], env, tmp / f"exporter-{port}.log")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, exporter.output()
                time.sleep(0.1)
    finally:
        exporter.stop()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
