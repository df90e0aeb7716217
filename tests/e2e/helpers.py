"""Helpers for browser tests: wait for a Streamlit run to finish, check for errors, screenshot.

Use with the `page` and `live_app` / `app_server` fixtures of tests/conftest.py:

    from tests.e2e.helpers import assert_no_exception, open_app, screenshot, wait_for_app

    def test_x(page, live_app):
        open_app(page, live_app)
        page.get_by_role("button", name="Generate").click()
        wait_for_app(page)
        assert_no_exception(page)
        screenshot(page, "x")
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"

EXCEPTION = "[data-testid='stException']"

# True once the app is connected, its script is not running (Streamlit's own e2e harness waits for
# data-test-script-state='notRunning'; before the first run it says 'initial'), no spinner shows,
# and no element is still a skeleton (markdown tables and charts load their code lazily and show
# an stSkeleton until then, after the script has finished).
_IDLE_JS = """() => {
  const app = document.querySelector("[data-testid='stApp']");
  return !!app
    && app.getAttribute("data-test-connection-state") === "CONNECTED"
    && app.getAttribute("data-test-script-state") === "notRunning"
    && !document.querySelector("[data-testid='stSpinner'], [data-testid='stSkeleton']");
}"""

_STATE_JS = """() => {
  const app = document.querySelector("[data-testid='stApp']");
  const n = (sel) => document.querySelectorAll(sel).length;
  return {connection: app && app.getAttribute("data-test-connection-state"),
          script: app && app.getAttribute("data-test-script-state"),
          spinners: n("[data-testid='stSpinner']"), skeletons: n("[data-testid='stSkeleton']")};
}"""


def wait_for_app(page: "Page", timeout_ms: float = 60_000, settle_ms: float = 150) -> None:
    """Wait until the app is connected and idle: script finished, no spinner, no skeleton.

    After a click, Streamlit needs a moment to start the rerun; `settle_ms` waits that long first and
    then for idle, so a test does not read the page before the rerun even began.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    if settle_ms:
        page.wait_for_timeout(settle_ms)
    try:
        page.wait_for_function(_IDLE_JS, timeout=timeout_ms)
    except PlaywrightTimeout:
        state = page.evaluate(_STATE_JS)
        raise AssertionError(f"the app at {page.url} did not become idle within {timeout_ms / 1000:.0f} s: "
                             f"{state}") from None


def open_app(page: "Page", url: str, timeout_ms: float = 60_000) -> None:
    """Navigate to `url` (base URL, or base URL + "/page-path") and wait for the first run."""
    page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    wait_for_app(page, timeout_ms=timeout_ms)


def assert_no_exception(page: "Page") -> None:
    """Fail with the exception's text when the page shows a Streamlit exception box."""
    boxes = page.locator(EXCEPTION)
    n = boxes.count()
    if n:
        texts = "\n---\n".join(boxes.nth(i).inner_text() for i in range(n))
        raise AssertionError(f"the page shows {n} exception(s):\n{texts}")


def screenshot(page: "Page", name: str) -> Path:
    """Save a full-page PNG as test-artifacts/<name>.png and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def click_point(page: "Page", point: "Locator") -> None:
    """Click a plotly scatter point (a Locator of its path) at its centre, as a person would."""
    point.scroll_into_view_if_needed()  # a mouse click lands only inside the viewport
    box = point.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)  # plotly picks the clicked point from its hover data: hover first
    page.wait_for_timeout(200)
    page.mouse.click(x, y)
