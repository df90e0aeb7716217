"""Smoke: the app starts on its Home page in Chromium without an exception, names the model it
inspects, lists Walkthrough near the top of the navigation, and its start links open their pages;
a user with no checkpoints is told what to do. Screenshots: test-artifacts/smoke.png (the Home
page), smoke-empty.png."""
from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, open_app, screenshot, wait_for_app

NO_MODEL = "No model yet"  # the guidance when the checkpoints root has no run
NAV_LINKS = "[data-testid='stSidebarNav'] a"


def test_home_renders_with_a_trained_run(page, live_app: str) -> None:
    open_app(page, live_app)
    assert_no_exception(page)
    assert page.get_by_text(NO_MODEL).count() == 0, "the app did not see the tiny run"
    expect(page.get_by_role("heading", name="nanolens", exact=True)).to_be_visible()
    expect(page.locator("[data-testid='stMain']").get_by_text("Inspecting tiny-run · latest")).to_be_visible()
    nav = [t.split("\n")[-1].strip() for t in page.locator(NAV_LINKS).all_inner_texts()]  # after the icon
    assert nav[:2] == ["Home", "Walkthrough"], f"the navigation reads {nav}"
    shot = screenshot(page, "smoke")
    assert shot.stat().st_size > 1000


def test_home_start_link_opens_the_walkthrough(page, live_app: str) -> None:
    open_app(page, live_app)
    page.locator("[data-testid='stMain']").get_by_role("link", name="Walkthrough").click()
    wait_for_app(page)
    expect(page).to_have_url(re.compile(re.escape(live_app + "/walkthrough") + r"(\?.*)?$"))  # + the view's link
    expect(page.get_by_role("heading", name="Walkthrough")).to_be_visible()
    assert_no_exception(page)


def test_empty_checkpoints_root_shows_guidance(page, app_server, tmp_path: Path) -> None:
    url = app_server(tmp_path)  # an empty folder as NANOLENS_CHECKPOINTS, and no bundled model
    open_app(page, url)
    assert_no_exception(page)
    guidance = page.get_by_text(NO_MODEL)
    assert guidance.count() >= 1, "an empty checkpoints root must say how to get a model"
    assert guidance.first.is_visible()
    screenshot(page, "smoke-empty")


def test_health_endpoint_answers_ok(live_app: str) -> None:
    import urllib.request

    with urllib.request.urlopen(live_app + "/_stcore/health", timeout=5) as r:
        assert r.read().decode().strip() == "ok"
