"""``/schema`` in a real headless Chromium: the Swagger UI the API serves from its own files renders every
operation of the OpenAPI document. Swagger UI 4 cannot read OpenAPI 3.1 (it shows "Unable to render this
definition" and no operation), and a viewer whose files do not load shows an empty page: both fail here."""

from __future__ import annotations

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from app import API_PREFIX
from tests.stack import Stack

pytestmark = pytest.mark.tools

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Swagger UI renders each operation as an .opblock; a definition it cannot read, as this message instead.
UNREADABLE = "Unable to render this definition"


def rendered_operations(browser: webdriver.Chrome) -> list[str]:
    """``METHOD /path`` of every operation on the page, as shown (Swagger UI puts zero-width spaces into long
    paths so they wrap), read in one script call while the page may still be rendering."""
    shown: list[str] = browser.execute_script(
        "return Array.from(document.querySelectorAll('.opblock')).map(block =>"
        " block.querySelector('.opblock-summary-method').innerText.trim() + ' ' +"
        " block.querySelector('.opblock-summary-path').innerText.trim());")
    return [text.replace("\u200b", "") for text in shown]


def test_the_schema_viewer_renders_every_operation_of_the_document(stack: Stack,
                                                                   browser: webdriver.Chrome) -> None:
    document = httpx.get(f"{stack.base_url}/schema/openapi.json", timeout=10).json()
    expected = {f"{method.upper()} {path}" for path, operations in document["paths"].items()
                for method in operations if method in HTTP_METHODS}
    assert f"POST {API_PREFIX}/generations" in expected

    browser.get(f"{stack.base_url}/schema")
    # Until the operations are drawn, or Swagger UI says it cannot draw them (then the assertions say which).
    WebDriverWait(browser, 30, poll_frequency=0.2).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, ".opblock") or UNREADABLE in b.find_element(
            By.TAG_NAME, "body").text, message="Swagger UI drew nothing within 30 s (are its files served?)")
    page = browser.find_element(By.TAG_NAME, "body").text
    assert UNREADABLE not in page, page[:1000]
    assert "Pose Generator API" in page
    rendered = rendered_operations(browser)
    assert f"POST {API_PREFIX}/generations" in rendered
    assert f"GET {API_PREFIX}/generations/{{generation_id}}" in rendered
    assert set(rendered) == expected, sorted(set(rendered) ^ expected)
