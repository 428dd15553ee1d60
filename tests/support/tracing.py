"""Tracing helpers shared by several test files (moved out of tests/test_tracing.py)."""

from __future__ import annotations

from tests.fakes.datadog_agent import FakeDatadogAgent


def tracing_env(agent: FakeDatadogAgent) -> dict[str, str]:
    return {
        "DD_TRACE_ENABLED": "true",
        "DD_TRACE_AGENT_URL": agent.url,
        "DD_TRACE_WRITER_INTERVAL_SECONDS": "0.2",
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
        "POSEGEN_ENV": "test",
    }
