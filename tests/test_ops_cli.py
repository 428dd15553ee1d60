"""``posegen ops`` against a running API and real workers: find an outage's failed generations, dry-run,
retry with a progress bar and a summary, pause and resume, read the audit log."""

from __future__ import annotations

import os
import subprocess
import sys

from app.api.auth import Role
from tests.stack import ROOT, Stack

POSES = ["pose_standing_confident", "pose_arms_crossed"]


def ops(stack: Stack, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POSEGEN_OPS_TOKEN": token or stack.token("ops-cli", Role.ADMIN)}
    return subprocess.run([sys.executable, "-m", "app.cli", "ops", "--api", stack.base_url, *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=120)


def test_operator_finds_retries_pauses_and_audits_from_the_command_line(fresh_stack) -> None:  # type: ignore[no-untyped-def]
    stack: Stack = fresh_stack(workers=0)
    broken = stack.start_worker(POSEGEN_FAULTS="FLUX_API_ERROR=1")
    user = stack.new_user(credits=600)
    failed = [stack.create_generation(user, POSES, prompt=f"outage {i}").json()["generationId"] for i in range(3)]
    for generation_id in failed:
        assert stack.wait_finished(user, generation_id)["status"] == "failed"
    broken.stop()
    flaky = stack.start_worker(POSEGEN_FAULTS="FLUX_API_ERROR=0.5")
    failed_poses = stack.create_until_partly_failed(stack.new_user(credits=3000),
                                                    [*POSES, "pose_waving_hello", "pose_tree_pose"])
    partly = list(failed_poses)[-1]
    flaky.stop()
    stack.start_worker()  # the provider is back

    # `failed` lists every generation with failed poses: the one that completed with some failed too.
    listed = ops(stack, "failed", "--error-type", "FLUX_API_ERROR", "--since", "10m")
    assert listed.returncode == 0, listed.stderr
    with_failures = [*failed, *(g for g, count in failed_poses.items() if count)]
    assert all(g in listed.stdout for g in with_failures), listed.stdout
    assert f"{len(with_failures)} generation(s)" in listed.stdout
    assert next(line for line in listed.stdout.splitlines() if partly in line).split()[2] == "completed"

    dry = ops(stack, "retry", "--dry-run", "--on-the-house", "--has-failed-poses", "--user", user)
    assert dry.returncode == 0, dry.stderr
    assert "would retry 3 generation(s), 6 pose(s), 1 user(s), 180 credits on the house" in dry.stdout

    done = ops(stack, "retry", "--on-the-house", "--has-failed-poses", "--user", user)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "[" in done.stdout and "3/3 finished" in done.stdout, "a progress bar while the batch runs"
    assert "summary: 3 completed, 0 failed" in done.stdout
    for generation_id in failed:
        assert stack.wait_finished(user, generation_id)["status"] == "completed"
    assert stack.balance(user) == 600

    unscoped = ops(stack, "pause", "--reason", "maintenance")
    assert unscoped.returncode == 2 and unscoped.stdout == "", unscoped.stdout
    assert unscoped.stderr.splitlines() == [
        "error: posegen ops pause needs --scope, one of: intake (POST /generations answers 503 with Retry-After), "
        "workers (drain: running jobs finish, no new one starts), all (both)"], unscoped.stderr
    assert stack.create_generation(user, POSES).status_code == 202, "nothing was paused"
    paused = ops(stack, "pause", "--scope", "intake", "--reason", "maintenance", "--retry-after", "30")
    assert paused.returncode == 0 and "intake: PAUSED by ops-cli (maintenance)" in paused.stdout
    refused = stack.create_generation(user, POSES)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
    resumed = ops(stack, "resume")
    assert resumed.returncode == 0 and "intake: open" in resumed.stdout

    audit = ops(stack, "audit", "--limit", "10")
    actions = [line.split()[3] for line in audit.stdout.splitlines()[1:]]
    assert actions[:5] == ["resume_workers", "resume_intake", "pause_intake", "retry", "retry_dry_run"], audit.stdout

    denied = ops(stack, "failed", token=stack.token(user))
    assert denied.returncode == 2 and "403" in denied.stderr
