"""Datadog APM: a generation is one trace, from the API request to the worker's poses, and logs say which."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from app import API_PREFIX
from tests.fakes.datadog_agent import FakeDatadogAgent, Span
from tests.stack import Stack
from tests.support.tracing import tracing_env

POSES = ["pose_tree_pose", "pose_arms_crossed"]
LOW_64 = (1 << 64) - 1


@pytest.fixture
def agent() -> Iterator[FakeDatadogAgent]:
    with FakeDatadogAgent() as running:
        yield running


def generation_spans(spans: list[Span], generation_id: str, attempt: int = 1) -> list[Span]:
    return [s for s in spans if s.name == "posegen.generation" and s.meta.get("generation.id") == generation_id
            and s.meta.get("generation.attempt") == str(attempt)]


def descends_from(span: Span, ancestor: Span, by_id: dict[int, Span]) -> bool:
    while span.parent_id:
        if span.parent_id == ancestor.span_id:
            return True
        parent = by_id.get(span.parent_id)
        if parent is None:
            return False
        span = parent
    return False


def log_lines(stack: Stack, generation_id: str) -> list[dict[str, Any]]:
    lines = []
    for process in [stack.api, *stack.workers]:
        assert process is not None
        for line in process.output().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("metadata", {}).get("generationId") == generation_id:
                    lines.append(entry)
    return lines


def low_64(log_trace_id: str) -> int:
    """A log's ``dd.trace_id``: 32 hex digits with 128-bit ids, else the lower 64 bits in decimal."""
    return int(log_trace_id, 16) & LOW_64 if len(log_trace_id) == 32 else int(log_trace_id)


def test_a_generation_is_one_trace_from_the_request_to_the_worker(  # type: ignore[no-untyped-def]
    fresh_stack, agent: FakeDatadogAgent
) -> None:
    stack: Stack = fresh_stack(workers=1, **tracing_env(agent))
    user = stack.new_user(credits=1000)
    answer = stack.create_generation(user, POSES)
    assert answer.status_code == 202, answer.text
    generation_id = answer.json()["generationId"]
    assert stack.wait_finished(user, generation_id)["status"] == "completed"

    def complete(spans: list[Span]) -> bool:
        found = generation_spans(spans, generation_id)
        if not found:
            return False
        names = Counter(s.name for s in spans if s.trace_id_low == found[0].trace_id_low)
        return names["asgi.request"] == 1 and names["posegen.pose"] == 2 and names["rq.worker.perform_job"] == 1

    generation = generation_spans(agent.wait_for(complete), generation_id)[0]
    trace = agent.trace(generation.trace_id)
    by_id = {s.span_id: s for s in trace}
    roots = [s for s in trace if s.parent_id == 0]
    assert len(roots) == 1, [(s.name, s.resource) for s in roots]
    request = roots[0]
    assert (request.name, request.resource) == ("asgi.request", f"POST {API_PREFIX}/generations")
    assert all(s.parent_id in by_id for s in trace if s is not request), "every span hangs off the one trace"
    assert request.service == "pose-generator"
    assert request.meta["env"] == "test" and request.meta["version"] == "1.0.0"

    def only(name: str) -> Span:
        matches = [s for s in trace if s.name == name]
        assert len(matches) == 1, f"{name}: {len(matches)}"
        return matches[0]

    enqueue, job = only("rq.queue.enqueue_job"), only("rq.worker.perform_job")
    assert descends_from(enqueue, request, by_id) and descends_from(job, enqueue, by_id)
    assert descends_from(generation, job, by_id)
    assert any(s.name == "redis.command" and descends_from(s, enqueue, by_id) for s in trace)
    sql = [s for s in trace if s.name == "postgres.query"]
    assert any(not descends_from(s, job, by_id) for s in sql), "the API's SQL is in the trace"
    assert any(descends_from(s, generation, by_id) for s in sql), "the worker's SQL is in the trace"
    poses = [s for s in trace if s.name == "posegen.pose"]
    assert sorted(s.meta["pose.id"] for s in poses) == sorted(POSES)
    assert all(s.parent_id == generation.span_id and not s.error for s in poses)
    for name in ("posegen.provider", "posegen.storage"):
        assert sorted(by_id[s.parent_id].meta["pose.id"] for s in trace if s.name == name) == sorted(POSES)

    with stack.db() as conn:
        stored = conn.execute("SELECT trace_context FROM generations WHERE id = %s", (generation_id,)).fetchone()[0]
    assert int(stored["x-datadog-trace-id"]) == generation.trace_id_low

    lines = log_lines(stack, generation_id)
    messages = {line["message"] for line in lines}
    assert {"Generation accepted", "Processing generation job", "Generated pose successfully",
            "Generation finished"} <= messages
    for line in lines:
        assert low_64(line["metadata"]["dd.trace_id"]) == generation.trace_id_low, line
        assert int(line["metadata"]["dd.span_id"]) in by_id, line


def test_a_failed_pose_is_an_error_span(fresh_stack, agent: FakeDatadogAgent) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=1, POSEGEN_FAULTS="FLUX_API_ERROR=1.0", **tracing_env(agent))
    user = stack.new_user(credits=1000)
    generation_id = stack.create_generation(user, POSES[:1]).json()["generationId"]
    assert stack.wait_finished(user, generation_id)["status"] == "failed"
    spans = agent.wait_for(lambda spans: any(
        s.name == "posegen.pose" and s.trace_id_low == g.trace_id_low
        for g in generation_spans(spans, generation_id) for s in spans))
    generation = generation_spans(spans, generation_id)[0]
    pose = next(s for s in agent.trace(generation.trace_id) if s.name == "posegen.pose")
    assert pose.error == 1
    assert pose.meta["error_type"] == "FLUX_API_ERROR"
    assert pose.meta["error.type"].endswith("PoseGenerationError")


def test_a_job_requeued_by_the_reaper_stays_in_the_request_trace(  # type: ignore[no-untyped-def]
    fresh_stack, agent: FakeDatadogAgent
) -> None:
    stack: Stack = fresh_stack(workers=1, POSEGEN_LOCAL_LATENCY="3", **tracing_env(agent))
    user = stack.new_user(credits=1000)
    generation_id = stack.create_generation(user, POSES).json()["generationId"]
    with stack.db() as conn:
        deadline = time.monotonic() + 20
        while conn.execute("SELECT status FROM generations WHERE id = %s",
                           (generation_id,)).fetchone()[0] != "processing":
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.05)
        stored = conn.execute("SELECT trace_context FROM generations WHERE id = %s", (generation_id,)).fetchone()[0]
    for pid in stack.workers[0].children():  # the work-horse dies mid-generation; the reaper re-enqueues it
        os.kill(pid, signal.SIGKILL)
    assert stack.wait_finished(user, generation_id, timeout=40)["status"] == "completed"

    spans = agent.wait_for(lambda spans: bool(generation_spans(spans, generation_id, attempt=2)))
    retry = generation_spans(spans, generation_id, attempt=2)[0]
    request_trace = int(stored["x-datadog-trace-id"])
    assert retry.trace_id_low == request_trace
    retry_job = next(s for s in spans if s.name == "rq.worker.perform_job" and s.meta.get("job.id", "").endswith(
        "-a2") and generation_id in s.meta.get("job.id", ""))
    assert retry_job.trace_id_low != request_trace, "the re-enqueued job itself starts in the reaper's trace"
    request = [s for s in agent.trace(request_trace) if s.name == "asgi.request"]
    assert [s.resource for s in request] == [f"POST {API_PREFIX}/generations"]
    retry_lines = [line for line in log_lines(stack, generation_id) if line["message"] == "Processing generation job"
                   and line["metadata"]["attempt"] == 2]
    assert retry_lines and low_64(retry_lines[0]["metadata"]["dd.trace_id"]) == request_trace


def test_without_tracing_logs_still_name_the_generation(stack: Stack) -> None:
    user = stack.new_user(credits=1000)
    generation_id = stack.create_generation(user, POSES[:1]).json()["generationId"]
    stack.wait_finished(user, generation_id)
    lines = [line for line in log_lines(stack, generation_id) if line["component"] == "Worker"]
    assert {"Processing generation job", "Generation finished"} <= {line["message"] for line in lines}
    assert not any("dd.trace_id" in line["metadata"] for line in lines)
