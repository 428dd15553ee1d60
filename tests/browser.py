"""A real headless Chromium for the tests of pages (Debian's ``chromium`` + ``chromium-driver``, Selenium), and
reads of pages that re-render themselves. The ``browser`` fixture (tests/conftest.py) opens one per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1600")


@contextmanager
def headless_chromium() -> Iterator[webdriver.Chrome]:
    """A Chromium session driven through chromedriver, quit on exit; the test fails when either is missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("chromium / chromedriver missing: apt-get install -y chromium chromium-driver (make tools does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    session.implicitly_wait(0)
    try:
        yield session
    finally:
        session.quit()


def wait_for(browser: webdriver.Chrome, css: str, timeout: float = 60) -> None:
    """Until an element matching ``css`` is on the page."""
    WebDriverWait(browser, timeout, poll_frequency=0.2).until(lambda b: b.find_elements(By.CSS_SELECTOR, css))


def text_of(browser: webdriver.Chrome, element_id: str) -> str | None:
    """The element's current text, read in one script call: a page that re-renders parts of itself can replace a
    found element before its text is read (a stale node)."""
    return browser.execute_script(  # type: ignore[no-any-return]
        "const e = document.getElementById(arguments[0]); return e ? e.innerText.trim() : null;", element_id)


def texts_of(browser: webdriver.Chrome, css: str) -> list[str]:
    """The texts of every element matching ``css``, read in one script call (see :func:`text_of`)."""
    return browser.execute_script(  # type: ignore[no-any-return]
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText.trim());", css)
