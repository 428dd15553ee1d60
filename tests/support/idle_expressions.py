"""Idle expressions helpers shared by several test files (moved out of tests/test_idle_expressions.py)."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            answer = httpx.get(url, timeout=5)
            if answer.status_code == 200:
                return answer.text
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"no metrics at {url}"
        time.sleep(0.2)

def selector(name: str, labels: dict[str, str]) -> str:
    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    return name + "{" + ",".join(f"{key}={quote(value)}" for key, value in sorted(labels.items())) + "}"

def samples(text: str, job: str, instance: str) -> dict[str, float]:
    """pose_* samples of one exposition as promtool series selectors, with the target's job and instance."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("pose_") or sample.name.endswith("_created"):
                continue
            found[selector(sample.name, {**sample.labels, "job": job, "instance": instance})] = sample.value
    found[selector("up", {"job": job, "instance": instance})] = 1.0
    return found
