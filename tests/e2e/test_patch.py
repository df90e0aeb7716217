"""Patch page in Chromium: type two prompts, run the sweep, see the heatmap, click a cell and see
the clean, patched and corrupted distributions. Screenshot: test-artifacts/patch.png."""
from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, open_app, screenshot, wait_for_app


def fill(page, label: str, text: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(text)
    box.press("Enter")
    wait_for_app(page)


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
        box = points.nth(len("To be, or not") + 11).bounding_box()  # layer 1, position 11 (the changed token)
        assert box is not None
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)  # plotly picks the clicked point from its hover data: hover first
        page.wait_for_timeout(200)
        page.mouse.click(x, y)
        expect(page.locator("[data-testid='stPlotlyChart']")).to_have_count(4)
        expect(page.get_by_text("patched (1, 11)")).to_have_count(1)
        assert_no_exception(page)
        page.set_viewport_size({"width": 1280, "height": 1600})
        page.wait_for_timeout(800)
        screenshot(page, "patch")
    finally:
        expect.set_options(timeout=5_000)
