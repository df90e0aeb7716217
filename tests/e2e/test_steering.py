"""Generate page's steering panel in Chromium, on the bundled model: the default and steered columns
step together, Back and a forced token work, the α sweep is drawn, a saved vector is reloaded.
Screenshots: test-artifacts/steering-columns.png, steering-sweep.png, steering-reloaded.png."""
from __future__ import annotations

import re
import uuid

from playwright.sync_api import expect

from tests.e2e.helpers import REPO, assert_no_exception, open_app, wait_for_app
from tests.e2e.test_attention import full_screenshot, patient_expect, type_prompt  # noqa: F401 (fixture)

BUNDLED = REPO / "checkpoints" / "shakespeare-char"


def click(page, name: str) -> None:
    page.get_by_role("button", name=name, exact=True).click()
    wait_for_app(page)


def expect_columns(page, n: int) -> None:
    """Both columns draw n generated tokens, and the caption says so."""
    texts = page.locator("[data-new-tokens]")
    expect(texts).to_have_count(2)
    for i in range(2):
        expect(texts.nth(i)).to_have_attribute("data-new-tokens", str(n))
    expect(page.get_by_text(re.compile(rf"^{n} new tokens in each column"))).to_have_count(1)


def choose(page, label: str) -> None:
    """Pick a radio option by its label (Streamlit hides the input: click its text)."""
    page.locator("[data-testid='stRadio'] label").filter(has_text=label).first.click()
    wait_for_app(page)


def test_steered_and_default_columns_sweep_and_a_saved_vector(page, app_server, tiny_checkpoint) -> None:
    url = app_server(tiny_checkpoint.root, NANOLENS_BUNDLED=str(BUNDLED))
    open_app(page, url + "/generate")
    type_prompt(page, "ROMEO:\nBut soft")
    page.get_by_text("Steer: a default and a steered column").click()
    wait_for_app(page)
    choose(page, "A token's direction")
    expect(page.get_by_text(re.compile(r"Vector: direction of '!'"))).to_have_count(1)
    for i in range(5):
        click(page, "Step both")
        expect_columns(page, i + 1)
    assert_no_exception(page)
    charts = page.locator("[data-testid='stPlotlyChart']")
    expect(charts).to_have_count(4)  # two distributions, the KL per step, the α sweep
    expect(page.get_by_text("KL(steered ‖ default)").first).to_be_visible()
    click(page, "Back")
    expect_columns(page, 4)
    force = page.locator("[class*='st-key-steer_force_steered_'] button").first
    wanted = force.inner_text().split(" · ")[0]
    force.click()
    wait_for_app(page)
    expect(page.get_by_text(re.compile(rf"^token \d+: '{re.escape(wanted)}' \(forced"))).to_have_count(1)
    expect_columns(page, 4)
    full_screenshot(page, "steering-columns")

    expect(page.get_by_text("α sweep: p('!') after the prompt")).to_have_count(1)
    expect(page.get_by_text("Greedy decoding (temperature 0)")).to_have_count(1)
    page.locator("[data-testid='stExpander']").filter(has_text="α sweep").scroll_into_view_if_needed()
    full_screenshot(page, "steering-sweep")

    name = f"bang-{uuid.uuid4().hex[:6]}"
    page.get_by_text("Save this vector", exact=True).click()
    box = page.get_by_label("Save this vector as")
    box.fill(name)
    box.press("Enter")
    wait_for_app(page)
    click(page, "Save vector")
    expect(page.get_by_text(re.compile(rf"Saved {name}\.safetensors in the app's data folder"))).to_have_count(1)
    choose(page, "A saved vector")
    expect(page.locator(".st-key-steer_saved input")).to_have_value(name)
    expect(page.get_by_text(re.compile(r"Vector: direction of '!'.*made on this model"))).to_have_count(1)
    click(page, "Step both")
    expect_columns(page, 5)  # the same vector, bit for bit, at the same place: the columns go on from 4
    assert_no_exception(page)
    full_screenshot(page, "steering-reloaded")
