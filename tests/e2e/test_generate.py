"""Generate page in Chromium: Step five times and see five new tokens, Back removes one, and an
alternative token can be forced in place of the last one. Screenshot: test-artifacts/generate.png."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, open_app, wait_for_app
from tests.e2e.test_attention import full_screenshot, patient_expect, type_prompt  # noqa: F401 (fixture)

TOKEN_HEADING = re.compile(r"^Token \d+:")


def expect_new_tokens(page, n: int) -> None:
    """The page reports n new tokens, and draws n generated token spans."""
    expect(page.locator("[data-new-tokens]")).to_have_attribute("data-new-tokens", str(n))
    expect(page.get_by_text(re.compile(rf"^{n} new tokens"))).to_have_count(1)


def click(page, name: str) -> None:
    page.get_by_role("button", name=name, exact=True).click()
    wait_for_app(page)


def test_step_back_and_force(page, live_app: str) -> None:
    open_app(page, live_app + "/generate")
    assert_no_exception(page)
    type_prompt(page, "ROMEO:\nBut soft")
    expect_new_tokens(page, 0)
    for i in range(5):
        click(page, "Step")
        expect_new_tokens(page, i + 1)
    assert_no_exception(page)
    expect(page.get_by_role("heading", name=TOKEN_HEADING)).to_have_count(1)
    expect(page.locator("[data-testid='stPlotlyChart']")).to_have_count(2)  # distribution, attention
    click(page, "Back")
    expect_new_tokens(page, 4)

    # force the first offered alternative: the last token becomes that one, still 4 new tokens
    force = page.locator("[class*='st-key-gen_force_'] button").first
    wanted = force.inner_text().split(" · ")[0]
    force.click()
    wait_for_app(page)
    heading = page.get_by_role("heading", name=TOKEN_HEADING)
    expect(heading).to_contain_text("forced")
    expect(heading).to_contain_text(f"'{wanted}'")
    expect_new_tokens(page, 4)
    assert_no_exception(page)
    full_screenshot(page, "generate")
