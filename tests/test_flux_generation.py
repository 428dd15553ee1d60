"""Generations through the real worker with the flux provider, against the fake FLUX server.

Each FLUX fault ends as its seed error type on the pose, refunded once; a transient 429 is retried away.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.flux_server import FakeFlux
from tests.stack import Stack, check_ledger_invariants, free_port

POSES = ["pose_standing_confident", "pose_arms_crossed", "pose_waving_hello", "pose_tree_pose"]


@pytest.fixture
def fake_flux() -> Iterator[FakeFlux]:
    with FakeFlux(latency=0.2, retry_after=0.2, hang_seconds=10) as fake:
        yield fake


def flux_env(base_url: str, api_key: str, **extra: str) -> dict[str, str]:
    return {"POSEGEN_PROVIDER": "flux", "FLUX_API_KEY": api_key, "FLUX_BASE_URL": base_url,
            "FLUX_TIMEOUT_SECONDS": "0.5", "FLUX_DEADLINE_SECONDS": "4", "FLUX_MAX_RETRIES": "2",
            "FLUX_POLL_INTERVAL_SECONDS": "0.05", **extra}


def test_four_poses_call_flux_concurrently(fresh_stack, fake_flux: FakeFlux) -> None:  # type: ignore[no-untyped-def]
    fake_flux.control({"action": "configure", "latency": 2.0})
    stack: Stack = fresh_stack(workers=1, **flux_env(fake_flux.base_url, fake_flux.api_key))
    user = stack.new_user(credits=1000)
    done = stack.wait_finished(user, stack.create_generation(user, POSES).json()["generationId"])
    assert done["status"] == "completed"
    stats = fake_flux.stats()
    assert stats["accepted"] == 4 and stats["peak_in_flight"] == 4, stats
    tasks = fake_flux.tasks()
    assert all(t.control_image_is_png for t in tasks), "each call carries the pose's ControlNet image"
    assert len({t.seed for t in tasks}) == 4


FAULTS = [
    ("[fault:moderated]", "FLUX_API_ERROR"),
    ("[fault:error]", "FLUX_API_ERROR"),
    ("[fault:status_500]", "FLUX_API_ERROR"),
    ("[fault:status_429]", "FLUX_API_ERROR"),
    ("[fault:garbage]", "FLUX_API_ERROR"),
    ("[fault:status_500@poll]", "FLUX_API_ERROR"),
    ("[fault:hang]", "TIMEOUT_ERROR"),
    ("[fault:hang@sample]", "TIMEOUT_ERROR"),
]


def test_each_flux_fault_maps_to_its_error_type_and_is_refunded(
    fresh_stack, fake_flux: FakeFlux  # type: ignore[no-untyped-def]
) -> None:
    stack: Stack = fresh_stack(workers=1, **flux_env(fake_flux.base_url, fake_flux.api_key))
    user = stack.new_user(credits=1000)
    started = [(marker, error_type, stack.create_generation(user, POSES[:2], prompt=f"a portrait {marker}")
                .json()["generationId"]) for marker, error_type in FAULTS]
    for marker, error_type, generation_id in started:
        done = stack.wait_finished(user, generation_id, timeout=60)
        assert done["status"] == "failed", marker
        assert [p["errorType"] for p in done["poses"]] == [error_type, error_type], marker
        assert done["errorType"] == error_type and done["creditsRefunded"] == 60, marker
    assert stack.balance(user) == 1000
    with stack.db() as conn:
        check_ledger_invariants(conn)


def test_transient_429_and_500_are_retried_to_success(fresh_stack, fake_flux: FakeFlux) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=1, **flux_env(fake_flux.base_url, fake_flux.api_key))
    fake_flux.fail_next("status_429", n=1)
    fake_flux.fail_next("status_500", n=1, stage="poll")
    user = stack.new_user(credits=1000)
    done = stack.wait_finished(user, stack.create_generation(user, POSES[:1]).json()["generationId"])
    assert done["status"] == "completed" and done["creditsRefunded"] == 0
    assert fake_flux.stats()["rate_limited"] >= 1


def test_unreachable_flux_is_network_error(fresh_stack, fake_flux: FakeFlux) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=1, **flux_env(f"http://127.0.0.1:{free_port()}", "k"))
    user = stack.new_user(credits=1000)
    done = stack.wait_finished(user, stack.create_generation(user, POSES[:1]).json()["generationId"])
    assert done["status"] == "failed" and done["errorType"] == "NETWORK_ERROR"
    assert stack.balance(user) == 1000


def test_wrong_key_is_flux_api_error(fresh_stack, fake_flux: FakeFlux) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=1, **flux_env(fake_flux.base_url, "not-the-key"))
    user = stack.new_user(credits=1000)
    done = stack.wait_finished(user, stack.create_generation(user, POSES[:1]).json()["generationId"])
    assert done["status"] == "failed" and done["errorType"] == "FLUX_API_ERROR"
