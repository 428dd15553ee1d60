"""Exemplars: from a histogram bucket in Prometheus to the Datadog trace of the generation behind it.

A stack with tracing on sends its spans to the fake Datadog agent; a real Prometheus, run with the
feature flags of ``deploy/docker-compose.yml`` (exemplar storage), scrapes the exporter and the API in
OpenMetrics. Prometheus's ``/api/v1/query_exemplars`` must then return, for the generation-duration
histogram, trace ids the agent received as the trace of that very generation, and for the API's request
duration, trace ids of requests the agent received.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fakes.datadog_agent import FakeDatadogAgent
from tests.stack import Process, Stack, free_port
from tests.support.monitoring import PROMETHEUS_BIN, Daemon, PrometheusAPI, prometheus_config, wait_until
from tests.support.tracing import tracing_env

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parent.parent
POSES = ["pose_tree_pose", "pose_arms_crossed"]


def deployed_feature_flags() -> list[str]:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text(encoding="utf-8"))
    flags = [arg for arg in compose["services"]["prometheus"]["command"] if arg.startswith("--enable-feature")]
    assert "--enable-feature=exemplar-storage" in flags, flags
    return flags


@pytest.fixture
def agent() -> Iterator[FakeDatadogAgent]:
    with FakeDatadogAgent() as running:
        yield running


def exemplars(prom: PrometheusAPI, metric: str, since: float) -> list[dict[str, str]]:
    answer = prom.http.get("/api/v1/query_exemplars",
                           params={"query": metric, "start": since, "end": time.time() + 60})
    answer.raise_for_status()
    return [exemplar["labels"] for series in answer.json()["data"] for exemplar in series["exemplars"]]


def test_a_slow_bucket_links_to_the_trace_of_its_generation(  # type: ignore[no-untyped-def]
    fresh_stack, agent: FakeDatadogAgent, tmp_path: Path
) -> None:
    started_at = time.time() - 5
    stack: Stack = fresh_stack(workers=1, **tracing_env(agent))
    exporter_port, prometheus_port = free_port(), free_port()
    daemons: list[Any] = [Process(["exporter", "--port", str(exporter_port)], stack.env, tmp_path / "exporter.log")]
    try:
        config = prometheus_config({
            "posegen-api": [f"127.0.0.1:{stack.port}"],
            "posegen-worker": [f"127.0.0.1:{stack.workers[0].metrics_port}"],
            "posegen-exporter": [f"127.0.0.1:{exporter_port}"],
            "prometheus": [f"127.0.0.1:{prometheus_port}"],
        }, [], f"127.0.0.1:{free_port()}")
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        prometheus = Daemon([PROMETHEUS_BIN, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prometheus_port}", *deployed_feature_flags()],
                            tmp_path / "prometheus.log")
        daemons.append(prometheus)
        prom = PrometheusAPI(f"http://127.0.0.1:{prometheus_port}")

        def diagnostics() -> str:
            return stack.logs() + "\n--- prometheus ---\n" + prometheus.output()[-3000:]

        wait_until("Prometheus ready", lambda: httpx.get(f"http://127.0.0.1:{prometheus_port}/-/ready",
                                                         timeout=2).status_code == 200, 30, diagnostics)
        user = stack.new_user(credits=1000)
        created = set()
        for _ in range(3):
            answer = stack.create_generation(user, POSES)
            assert answer.status_code == 202, answer.text
            created.add(answer.json()["generationId"])
        for generation_id in created:
            assert stack.wait_finished(user, generation_id)["status"] == "completed"

        found = wait_until(
            "exemplars of pose_generation_duration_seconds naming our generations",
            lambda: [e for e in exemplars(prom, "pose_generation_duration_seconds_bucket", started_at)
                     if e.get("generation_id") in created],
            30, diagnostics)
        for exemplar in found:
            generation_id, trace_id = exemplar["generation_id"], int(exemplar["trace_id"])
            agent.wait_for(lambda spans, g=generation_id, t=trace_id: any(
                s.name == "posegen.generation" and s.meta.get("generation.id") == g and s.trace_id_low == t
                for s in spans))
            requests = [s for s in agent.trace(trace_id) if s.name == "asgi.request" or s.type == "web"]
            assert requests, f"trace {trace_id} of {generation_id} has no API request span"

        # The API's own latency histogram: its exemplars are traces of requests the agent received.
        api = wait_until("exemplars of pose_http_request_duration_seconds",
                         lambda: exemplars(prom, "pose_http_request_duration_seconds_bucket", started_at), 30,
                         diagnostics)
        received = {s.trace_id_low for s in agent.spans()}
        assert {int(e["trace_id"]) for e in api} & received, (api[:3], len(received))
        # A poll of a generation names it too.
        assert {e.get("generation_id") for e in api} & created, api
        prom.close()
    finally:
        for daemon in reversed(daemons):
            daemon.stop()
