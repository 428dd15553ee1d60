"""Injected faults (POSEGEN_FAULTS): each failed pose gets its seed error type and is refunded once."""

from __future__ import annotations

from collections import Counter

from app.errors import ErrorType
from app.worker.faults import FaultPlan
from tests.stack import Stack, check_ledger_invariants

FAULTS = {
    ErrorType.FLUX_API_ERROR: 0.2,
    ErrorType.TIMEOUT_ERROR: 0.15,
    ErrorType.STORAGE_ERROR: 0.15,
    ErrorType.CONTROLNET_ERROR: 0.1,
    ErrorType.NETWORK_ERROR: 0.1,
}
POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose",
         "pose_runway_walk", "pose_deep_squat", "pose_jazz_hands", "pose_seated_upright"]


def test_each_fault_maps_to_its_error_type_with_refunds(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    spec = ",".join(f"{k.value}={v}" for k, v in FAULTS.items())
    stack: Stack = fresh_stack(workers=1, POSEGEN_FAULTS=spec)
    user = stack.new_user(credits=10_000)
    plan = FaultPlan(FAULTS)
    generations = [stack.create_generation(user, POSES, prompt=f"drill {i}").json()["generationId"]
                   for i in range(6)]
    seen: Counter[str] = Counter()
    expected_refund = 0
    for generation_id in generations:
        done = stack.wait_finished(user, generation_id)
        expected = [plan.pick(generation_id, position, 1) for position in range(len(POSES))]
        got = [pose["errorType"] for pose in done["poses"]]
        assert got == [e.value if e else None for e in expected], generation_id
        for pose, fault in zip(done["poses"], expected, strict=True):
            assert pose["status"] == ("failed" if fault else "completed")
            assert (pose["imageUrl"] is None) == bool(fault)
        failures = [e for e in expected if e]
        assert done["creditsRefunded"] == 30 * len(failures)
        assert done["status"] == ("failed" if len(failures) == len(POSES) else "completed")
        if failures:
            most = Counter(failures).most_common()
            assert done["errorType"] in {t.value for t, n in most if n == most[0][1]}
        else:
            assert done["errorType"] is None
        seen.update(e.value for e in failures)
        expected_refund += 30 * len(failures)
    assert set(seen) == {t.value for t in FAULTS}, seen
    assert stack.balance(user) == 10_000 - 6 * len(POSES) * 30 + expected_refund
    with stack.db() as conn:
        check_ledger_invariants(conn)
        recorded = dict(conn.execute(
            "SELECT error_type, count(*) FROM error_events WHERE user_id = %s GROUP BY error_type", (user,)))
        assert recorded == dict(seen)


def test_all_poses_failing_fails_the_generation_and_refunds_everything(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=1, POSEGEN_FAULTS="FLUX_API_ERROR=1.0")
    user = stack.new_user(credits=500)
    generation_id = stack.create_generation(user, POSES[:3]).json()["generationId"]
    done = stack.wait_finished(user, generation_id)
    assert done["status"] == "failed" and done["errorType"] == "FLUX_API_ERROR"
    assert done["creditsCharged"] == 90 and done["creditsRefunded"] == 90
    assert stack.balance(user) == 500
