"""The operator console in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, Selenium):
an operator signs in, finds an outage's failed generations, looks at one's attempts, dry-runs, retries,
sees them complete, pauses and resumes intake. A screenshot lands in the test's tmp dir."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from app import API_PREFIX
from app.api.auth import Role
from tests.browser import text_of, texts_of, wait_for
from tests.stack import Stack

pytestmark = pytest.mark.tools

POSES = ["pose_standing_confident", "pose_arms_crossed"]


def test_operator_retries_an_outage_from_the_console(fresh_stack, browser: webdriver.Chrome,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path) -> None:
    stack: Stack = fresh_stack(workers=0)
    broken = stack.start_worker(POSEGEN_FAULTS="FLUX_API_ERROR=1")
    user = stack.new_user(credits=300)
    failed = [stack.create_generation(user, POSES, prompt=f"outage {i}").json()["generationId"] for i in range(2)]
    for generation_id in failed:
        assert stack.wait_finished(user, generation_id)["status"] == "failed"
    broken.stop()
    stack.start_worker()

    console = f"{stack.base_url}{API_PREFIX}/admin/console/"
    browser.get(console)
    browser.find_element(By.ID, "token").send_keys(stack.token(user))
    browser.find_element(By.ID, "sign-in").click()
    wait_for(browser, "#sign-in-error")
    assert "ADMIN" in text_of(browser, "sign-in-error"), "a user's token does not sign in"
    browser.find_element(By.ID, "token").send_keys(stack.token("console-op", Role.ADMIN))
    browser.find_element(By.ID, "sign-in").click()
    wait_for(browser, "#actor")

    # Find the outage's failed generations.
    Select(browser.find_element(By.ID, "f-errorType")).select_by_value("FLUX_API_ERROR")
    browser.find_element(By.ID, "f-userId").send_keys(user)
    browser.find_element(By.ID, "find").click()
    wait_for(browser, "tr.generation")
    ids = browser.execute_script(
        "return Array.from(document.querySelectorAll('tr.generation')).map(r => r.dataset.id);")
    assert sorted(ids) == sorted(failed)
    assert set(texts_of(browser, "tr.generation .status")) == {"failed"}

    # One generation's attempts.
    browser.find_element(By.LINK_TEXT, failed[0]).click()
    wait_for(browser, "#attempts")
    assert texts_of(browser, "#attempts .outcome") == ["failed"]

    # Dry run, then retry; the page follows the batch until it is done.
    browser.find_element(By.ID, "dry-run").click()
    wait_for(browser, "#dry-run-result")
    assert text_of(browser, "dry-run-counts") == (
        "2 generation(s), 4 pose(s), 1 user(s), 120 credits on the house")
    browser.find_element(By.ID, "retry").click()
    wait_for(browser, "#retry-done", timeout=90)
    assert (text_of(browser, "progress-text") or "").startswith("2 completed, 0 failed")
    for generation_id in failed:
        assert stack.wait_finished(user, generation_id)["status"] == "completed"
    assert stack.balance(user) == 300

    browser.get(f"{console}?status=completed&userId={user}&generation={failed[0]}")
    wait_for(browser, "#attempts")
    assert texts_of(browser, "#attempts .outcome") == ["failed", "completed"]
    browser.save_screenshot(str(tmp_path / "console-after-retry.png"))

    # Pause and resume intake.
    browser.find_element(By.ID, "pause-reason").send_keys("console drill")
    browser.find_element(By.ID, "pause").click()
    deadline = time.monotonic() + 10
    while text_of(browser, "intake-state") != "paused":  # the page shows the state the server answers
        assert time.monotonic() < deadline, text_of(browser, "intake-state")
        time.sleep(0.1)
    assert stack.create_generation(user, POSES).status_code == 503
    browser.find_element(By.ID, "resume").click()
    deadline = time.monotonic() + 10
    while text_of(browser, "intake-state") != "open":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    actions = texts_of(browser, "#audit .action")
    assert actions[:5] == ["resume_workers", "resume_intake", "pause_intake", "retry", "retry_dry_run"], actions
    browser.save_screenshot(str(tmp_path / "console.png"))
    assert (tmp_path / "console.png").stat().st_size > 10_000


def test_the_console_opens_on_every_generation_with_failed_poses(fresh_stack, browser: webdriver.Chrome) -> None:  # type: ignore[no-untyped-def]
    """Operators retry failed poses: the default view lists the generations that ended ``completed`` with some
    poses failed beside the ``failed`` ones, and its dry run counts them all; "Poses: any" shows the rest."""
    stack: Stack = fresh_stack(workers=0)
    flaky = stack.start_worker(POSEGEN_FAULTS="FLUX_API_ERROR=0.5")
    user = stack.new_user(credits=3000)
    failed_poses = stack.create_until_partly_failed(user, [*POSES, "pose_waving_hello", "pose_tree_pose"])
    flaky.stop()
    stack.start_worker()
    clean = stack.create_generation(user, POSES, prompt="all delivered").json()["generationId"]
    assert stack.wait_finished(user, clean)["status"] == "completed"
    with_failures = sorted(g for g, count in failed_poses.items() if count)

    console = f"{stack.base_url}{API_PREFIX}/admin/console/"
    browser.get(console)
    browser.find_element(By.ID, "token").send_keys(stack.token("console-op", Role.ADMIN))
    browser.find_element(By.ID, "sign-in").click()
    wait_for(browser, "#actor")
    ids = browser.execute_script(
        "return Array.from(document.querySelectorAll('tr.generation')).map(r => r.dataset.id);")
    assert sorted(ids) == with_failures
    assert "completed" in texts_of(browser, "tr.generation .status"), "a partly failed generation is listed"
    assert Select(browser.find_element(By.ID, "f-hasFailedPoses")).first_selected_option.text == "some failed"

    browser.find_element(By.ID, "dry-run").click()
    wait_for(browser, "#dry-run-result")
    assert text_of(browser, "dry-run-counts") == (
        f"{len(with_failures)} generation(s), {sum(failed_poses.values())} pose(s), 1 user(s), "
        f"{30 * sum(failed_poses.values())} credits on the house")

    Select(browser.find_element(By.ID, "f-hasFailedPoses")).select_by_visible_text("any")
    browser.find_element(By.ID, "find").click()
    WebDriverWait(browser, 30, poll_frequency=0.2).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, f"tr.generation[data-id='{clean}']"))
