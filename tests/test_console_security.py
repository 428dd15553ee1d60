"""The operators' console against a hostile page on the same site (another port of 127.0.0.1 here, a sibling
subdomain in production): it cannot frame the signed-in console. Response headers of every answer."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from app.api.admin_console import CONSOLE_PATH
from app.api.auth import Role
from tests.browser import wait_for
from tests.fakes.attacker_site import AttackerSite
from tests.stack import Stack


@pytest.fixture
def attacker() -> Iterator[AttackerSite]:
    with AttackerSite() as site:
        yield site


def sign_in(browser: webdriver.Chrome, stack: Stack) -> None:
    browser.get(f"{stack.base_url}{CONSOLE_PATH}/")
    wait_for(browser, "#token")
    browser.find_element(By.ID, "token").send_keys(stack.token("console-op", Role.ADMIN))
    browser.find_element(By.ID, "sign-in").click()
    wait_for(browser, "form[action$='/pause']")


def test_a_same_site_page_cannot_frame_the_signed_in_console(stack: Stack, browser: webdriver.Chrome,
                                                              attacker: AttackerSite) -> None:
    sign_in(browser, stack)
    attacker.pages["/frame"] = f'<iframe id="console" src="{stack.base_url}{CONSOLE_PATH}/" width=800 height=600>'
    browser.get(f"{attacker.base_url}/frame")
    wait_for(browser, "#console")
    browser.switch_to.frame(browser.find_element(By.ID, "console"))
    try:
        framed = browser.execute_script("return document.body ? document.body.innerHTML : ''")
        assert "/pause" not in framed, "the signed-in console's Pause form was shown inside another site's page"
    finally:
        browser.switch_to.default_content()
    browser.get(f"{stack.base_url}{CONSOLE_PATH}/")  # the console itself still works, signed in
    wait_for(browser, "form[action$='/pause']")


def test_every_answer_carries_the_headers_that_keep_browsers_from_misusing_it(stack: Stack) -> None:
    api = stack.http.get("/health")
    console = httpx.get(f"{stack.base_url}{CONSOLE_PATH}/", timeout=10)
    missing = httpx.get(f"{stack.base_url}/no-such-page", timeout=10)
    for answer in (api, console, missing):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in console.headers["content-security-policy"]
    assert console.headers["x-frame-options"] == "DENY" and console.headers["cache-control"] == "no-store"
    assert "content-security-policy" not in api.headers
    assert stack.http.get("/credits", headers=stack.headers("alice")).headers["x-content-type-options"] == "nosniff"
