"""Generate page in Chromium: Step five times and see five new tokens, Back removes one, and an
alternative token can be forced in place of the last one. Screenshot: test-artifacts/generate.png."""
from __future__ import annotations

import re
import time

from playwright.sync_api import expect

from tests.e2e.helpers import REPO, assert_no_exception, open_app, wait_for_app
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


# a prompt near the bundled model's block_size (256): every step slides the window and re-forwards
# the whole block, so each "Step ×10" callback lasts long enough for the second click to land in it
LONG_PROMPT = ("ROMEO:\nBut soft, what light through yonder window breaks? " * 5)[:240]
SECOND_CLICK_MS = 80  # after the first click's run has begun (the repro: two clicks 40 ms apart)
# the first click's run has begun on the server ("running" comes from the server, not the click)
FIRST_RUN_STARTED_JS = """(before) => {
  const app = document.querySelector("[data-testid='stApp']");
  const text = document.querySelector("[data-new-tokens]");
  return app.getAttribute("data-test-script-state") === "running"
    || (text && text.getAttribute("data-new-tokens") !== before);
}"""


def test_double_clicks_on_step10_all_count(page, app_server, tiny_checkpoint) -> None:
    """Issue 13.1: a click that arrives while the previous click's rerun is still stepping must
    neither crash the page nor be lost. On the bundled model, 5 double clicks on "Step ×10" make
    exactly 100 new tokens, and no exception box ever shows (before the fix: a RuntimeError from
    two threads in one Generator, or a click's tokens lost).

    The second click goes once the server has begun the first click's run: two clicks of one button
    that reach the server before that are one click to Streamlit (the newer rerun replaces the
    older before its callbacks run) whatever the app does, and a loaded machine can deliver two
    clicks that close (app/generation.py, BENCHMARKS.md "Concurrent sessions")."""
    bundled = REPO / "checkpoints" / "shakespeare-char"
    url = app_server(tiny_checkpoint.root, NANOLENS_BUNDLED=str(bundled))
    open_app(page, url + "/generate")
    type_prompt(page, LONG_PROMPT)
    expect_new_tokens(page, 0)
    box = page.get_by_role("button", name="Step ×10", exact=True).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for i in range(5):
        # raw mouse clicks: a locator click would wait for the button to settle between the two
        page.mouse.click(x, y)
        t0 = time.monotonic()
        page.wait_for_function(FIRST_RUN_STARTED_JS, arg=str(20 * i), polling=5)
        page.wait_for_timeout(max(0.0, SECOND_CLICK_MS - (time.monotonic() - t0) * 1000))
        page.mouse.click(x, y)
        wait_for_app(page)
        assert_no_exception(page)
        expect_new_tokens(page, 20 * (i + 1))
    assert_no_exception(page)
