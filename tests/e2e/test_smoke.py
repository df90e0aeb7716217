"""Smoke: the app starts, renders its home page in Chromium without an exception, and tells a
user with no checkpoints what to do."""
from __future__ import annotations

from pathlib import Path


from tests.e2e.helpers import assert_no_exception, open_app, screenshot

NO_MODEL = "No model yet"  # the home page's guidance when the checkpoints root has no run


def test_home_renders_with_a_trained_run(page, live_app: str) -> None:
    open_app(page, live_app)
    assert_no_exception(page)
    assert page.get_by_text(NO_MODEL).count() == 0, "the app did not see the tiny run"
    assert page.get_by_text("tiny-run").count() >= 1, "the app does not name the run it shows"
    shot = screenshot(page, "smoke")
    assert shot.stat().st_size > 1000


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
