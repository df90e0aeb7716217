"""Next-token page in Chromium: the prompt is drawn as tokens colored by surprise, and selecting a
position shows the distribution after it. Screenshot: test-artifacts/next_token.png."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, open_app, wait_for_app
from tests.e2e.test_attention import full_screenshot, patient_expect, type_prompt  # noqa: F401 (fixture)


def test_select_a_position_and_see_its_distribution(page, live_app: str) -> None:
    open_app(page, live_app + "/next-token")
    assert_no_exception(page)
    type_prompt(page, "To be, or not")
    strip = page.locator("[data-testid='stMarkdownContainer'] span[title*='surprise']")
    expect(strip).to_have_count(len("To be, or not") - 1)  # every token but the first was predicted
    expect(page.get_by_text("Reading tokens:")).to_have_count(1)  # issue 12, point 11: the glyph legend
    expect(page.locator("span[title='newline']")).to_have_text("⏎")
    heading = page.get_by_role("heading", name=re.compile("^Next-token distribution after"))
    expect(heading).to_have_text(re.compile("12:t$"))  # the last position first

    box = page.locator(".st-key-nt_pos input")
    box.click()
    page.get_by_role("option", name="after 3:b").click()
    wait_for_app(page)
    expect(heading).to_have_text(re.compile("3:b$"))
    chart = page.locator("[data-testid='stPlotlyChart']").first
    expect(chart.locator(".gtitle")).to_contain_text("actual next 'e'")  # "To be": after b comes e
    expect(chart.locator(".bars path")).to_have_count(10)  # the top 10 tokens
    assert_no_exception(page)
    full_screenshot(page, "next_token")
