"""Interventions in Chromium: ablate a head in the sidebar panel, see the banner on Next token and
the original and edited distributions side by side (they differ), then turn the edit off.
Screenshot: test-artifacts/interventions.png."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, open_app, wait_for_app
from tests.e2e.test_attention import full_screenshot, patient_expect, type_prompt  # noqa: F401 (fixture)


def bar_paths(chart) -> list[str]:
    return [p.get_attribute("d") for p in chart.locator(".bars path").all()]


def test_ablate_a_head_and_see_the_edited_distribution(page, live_app: str) -> None:
    open_app(page, live_app + "/next-token")
    assert_no_exception(page)
    type_prompt(page, "To be, or not")
    expect(page.get_by_text(re.compile("Edited model"))).to_have_count(0)
    for key in ("iv_h_0_0", "iv_h_0_1", "iv_h_1_0"):
        page.locator(f".st-key-{key} label").click()
        wait_for_app(page)
    expect(page.get_by_text(re.compile(r"Edited model: 3 heads ablated \(zero\)"))).to_have_count(1)
    charts = page.locator("[data-testid='stPlotlyChart']")
    expect(charts).to_have_count(3)  # original, edited, Δloss
    expect(charts.nth(0).locator(".gtitle")).to_contain_text("original model")
    expect(charts.nth(1).locator(".gtitle")).to_contain_text("edited model")
    expect(charts.nth(1).locator(".bars path")).to_have_count(10)
    assert bar_paths(charts.nth(0)) != bar_paths(charts.nth(1)), "the ablation should change the distribution"
    expect(page.get_by_role("heading", name="Δloss per position (edited − original)")).to_have_count(1)
    assert_no_exception(page)
    full_screenshot(page, "interventions")

    page.locator(".st-key-iv_off_banner button").first.click()
    wait_for_app(page)
    expect(page.get_by_text(re.compile("Edited model"))).to_have_count(0)
    expect(charts).to_have_count(1)
    assert_no_exception(page)
