"""Alerts helpers shared by several test files (moved out of tests/test_alerts.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.metric_catalogue import contract_series

ROOT = Path(__file__).resolve().parents[2]

ALERTS = ROOT / "alerts"

RULE_FILES = sorted((ALERTS / "rules").glob("*.yml"))

ALERTMANAGER = ALERTS / "alertmanager.yml"

# The metric names the exporter, the API, the workers and the canary promise (histograms as their series): every
# entry of the metric catalogue.
CONTRACT_METRICS = set(contract_series())

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}

def require_tool(name: str, package: str) -> str:
    """The tool's path, or a failed test telling how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: install the Debian package `{package}` "
            f"(apt-get install -y {package}, or `make tools`)",
            pytrace=False,
        )
    return path

def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)

def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and label names left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function call
        if match.group() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names

def load_rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]

def load_alerts() -> list[dict]:
    return [rule for rule in load_rules() if "alert" in rule]

def routes(*labels: str, verify: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [require_tool("amtool", "prometheus-alertmanager"), "config", "routes", "test"]
    argv.append(f"--config.file={ALERTMANAGER}")
    if verify:
        argv.append(f"--verify.receivers={verify}")
    return run(*argv, *labels)
