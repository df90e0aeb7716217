"""Patch page in Chromium: type two prompts, run the sweep, see the heatmap, click a cell and see
the clean, patched and corrupted distributions; switch the metric and the direction and see the
caption and the map follow. Screenshot: test-artifacts/patch.png."""
from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, click_point, open_app, screenshot, wait_for_app


def fill(page, label: str, text: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(text)
    # a prompt is a text area (it keeps newlines), where Ctrl+Enter applies and Enter adds a line
    box.press("Control+Enter" if "prompt" in label else "Enter")
    wait_for_app(page)


def choose(page, key: str, option: str) -> None:
    page.locator(f".st-key-{key} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_for_app(page)


def colours(page) -> list[str]:
    points = page.locator("[data-testid='stPlotlyChart']").first.locator(".scatterlayer .point")
    return [points.nth(i).evaluate("p => p.style.fill") for i in range(points.count())]


def test_sweep_heatmap_click_shows_three_distributions(page, live_app: str) -> None:
    expect.set_options(timeout=30_000)
    try:
        open_app(page, live_app + "/patch")
        fill(page, "Clean prompt", "To be, or not")
        fill(page, "Corrupted prompt", "To be, or nut")
        fill(page, "Clean answer", "e")
        fill(page, "Corrupted answer", "t")
        page.get_by_role("button", name="Run the sweep").click()
        wait_for_app(page)
        points = page.locator("[data-testid='stPlotlyChart']").first.locator(".scatterlayer .point")
        expect(points).to_have_count(2 * len("To be, or not"))
        click_point(page, points.nth(len("To be, or not") + 11))  # layer 1, position 11 (the changed token)
        expect(page.locator("[data-testid='stPlotlyChart']")).to_have_count(4)
        expect(page.get_by_text("patched (1, 11)")).to_have_count(1)
        assert_no_exception(page)
        caption = page.locator("[data-testid='stCaptionContainer']").filter(has_text="Metric:")
        expect(caption).to_contain_text("logit('e') − logit('t')")
        before = colours(page)
        choose(page, "pt_metric", "probability of the clean answer")
        expect(caption).to_contain_text("Metric: p('e')")
        expect(page.get_by_label("Corrupted answer", exact=True)).to_be_disabled()  # prob reads only the clean one
        choose(page, "pt_direction", "noise: corrupted into clean")
        expect(caption).to_contain_text("taken from the corrupted run")
        expect(points).to_have_count(2 * len("To be, or not"))
        assert colours(page) != before, "the map must be redrawn for the new metric and direction"
        click_point(page, points.nth(11))  # layer 0, position 11: its clean value patched out
        expect(page.get_by_text("patched (0, 11)")).to_have_count(1)
        assert_no_exception(page)
        page.set_viewport_size({"width": 1280, "height": 1600})
        page.wait_for_timeout(800)
        screenshot(page, "patch")
    finally:
        expect.set_options(timeout=5_000)
