"""A worker or its work-horse killed mid-generation: the generation still ends, credits stay right."""

from __future__ import annotations

import os
import signal
import time

from app.api.auth import Role
from tests.stack import Stack, check_ledger_invariants
from tests.support.worker_recovery import scrape_exporter

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]


def assert_no_dead_attempt_counted(stack: Stack) -> None:
    """The killed attempt of a generation that then completed is neither running nor failed anywhere: the
    health endpoint, the admin metrics, the exporter."""
    # The generation's row turns terminal before RQ moves the live attempt's job out of the started registry
    # (the horse returns, then its worker records the job): that move takes a moment, the dead attempt's job
    # would stay counted for good.
    deadline = time.monotonic() + 15
    while True:
        counts = stack.http.get("/health").json()["checks"]["queue"]["counts"]
        if (counts["active"], counts["failed"]) == (0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (counts["active"], counts["failed"]) == (0, 0), counts
    admin = stack.http.get("/metrics", headers=stack.headers("admin", Role.ADMIN)).json()
    assert (admin["queueActive"], admin["queueFailed"], admin["failedGenerations"]) == (0, 0, 0), admin
    samples = scrape_exporter(stack)
    assert samples[("pose_queue_jobs", (("state", "active"),))] == 0
    assert samples[("pose_queue_jobs", (("state", "failed"),))] == 0
    assert samples[("pose_queue_depth", ())] == 0
    assert samples[("pose_generations_total", (("status", "failed"),))] == 0


def _wait_status(stack: Stack, generation_id: str, status: str, timeout: float = 20, attempt: int = 1) -> None:
    deadline = time.monotonic() + timeout
    with stack.db() as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT status, attempt FROM generations WHERE id = %s", (generation_id,)).fetchone()
            if row and row == (status, attempt):
                return
            time.sleep(0.05)
    raise AssertionError(f"{generation_id} never reached {status}\n{stack.logs()}")


def test_sigkill_of_worker_mid_generation_is_recovered_by_another(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=1, POSEGEN_LOCAL_LATENCY="3")
    user = stack.new_user(credits=1000)
    generation_id = stack.create_generation(user, POSES).json()["generationId"]
    _wait_status(stack, generation_id, "processing")
    stack.workers[0].kill(signal.SIGKILL)
    with stack.db() as conn:
        assert conn.execute("SELECT status FROM generations WHERE id = %s",
                            (generation_id,)).fetchone()[0] == "processing"
    stack.start_worker()
    done = stack.wait_finished(user, generation_id, timeout=40)
    assert done["status"] == "completed"
    assert all(p["status"] == "completed" for p in done["poses"])
    assert stack.balance(user) == 1000 - 120
    with stack.db() as conn:
        assert conn.execute("SELECT attempt FROM generations WHERE id = %s", (generation_id,)).fetchone()[0] == 2
        check_ledger_invariants(conn)
    assert_no_dead_attempt_counted(stack)


def _signal_the_work_horse(stack: Stack, sig: signal.Signals) -> tuple[str, str, list[int]]:
    """A new user's 2-pose generation, and ``sig`` sent to the work-horse running it: (user, generation, horses)."""
    user = stack.new_user(credits=1000)
    generation_id = stack.create_generation(user, POSES[:2]).json()["generationId"]
    _wait_status(stack, generation_id, "processing")
    horses = stack.workers[0].children()
    assert horses, "the worker should have forked a work-horse"
    for pid in horses:
        os.kill(pid, sig)
    return user, generation_id, horses


def test_sigkill_of_the_work_horse_is_retried_by_the_same_worker(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=1, POSEGEN_LOCAL_LATENCY="3")
    user, generation_id, _ = _signal_the_work_horse(stack, signal.SIGKILL)
    done = stack.wait_finished(user, generation_id, timeout=40)
    assert done["status"] == "completed"
    assert stack.workers[0].alive()
    with stack.db() as conn:
        check_ledger_invariants(conn)
    assert_no_dead_attempt_counted(stack)


def test_generation_abandoned_on_every_attempt_fails_and_is_refunded(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=1, POSEGEN_LOCAL_LATENCY="30", POSEGEN_MAX_ATTEMPTS="2")
    user = stack.new_user(credits=1000)
    generation_id = stack.create_generation(user, POSES[:2]).json()["generationId"]
    for attempt in (1, 2):
        _wait_status(stack, generation_id, "processing", attempt=attempt)
        for pid in stack.workers[0].children():
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    done = stack.wait_finished(user, generation_id, timeout=40)
    assert done["status"] == "failed" and done["errorType"] == "TIMEOUT_ERROR"
    assert done["creditsRefunded"] == 60
    assert stack.balance(user) == 1000
    with stack.db() as conn:
        check_ledger_invariants(conn)


def test_a_work_horse_that_stops_renewing_its_lease_is_stopped_and_its_work_rerun(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    """A work-horse that hangs (here SIGSTOPped: alive, but neither working nor renewing its lease) while its
    worker still heartbeats the job: the reaper re-queues the generation as attempt 2, and the worker, seeing
    its horse's attempt fenced, kills it instead of waiting out the job timeout (an hour) with attempt 2
    queued behind it."""
    stack: Stack = fresh_stack(workers=1, POSEGEN_LOCAL_LATENCY="1")
    user, generation_id, horses = _signal_the_work_horse(stack, signal.SIGSTOP)
    done = stack.wait_finished(user, generation_id, timeout=45)
    assert done["status"] == "completed" and all(p["status"] == "completed" for p in done["poses"])
    assert stack.workers[0].alive()
    assert not [pid for pid in horses if os.path.exists(f"/proc/{pid}")], "the hung horse was stopped"
    assert "stopping the work-horse" in stack.workers[0].output()
    with stack.db() as conn:
        assert conn.execute("SELECT attempt FROM generations WHERE id = %s", (generation_id,)).fetchone()[0] == 2
        check_ledger_invariants(conn)
    assert_no_dead_attempt_counted(stack)
