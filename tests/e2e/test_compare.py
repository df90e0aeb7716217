"""The Compare page in Chromium: it opens on two snapshots of the tiny run (its first and last, the
page's default) with the B − A pattern, the per-head distances and a KL above zero; choosing the
same snapshot for both sides makes the difference vanish (KL 0, the diff changes); the Logit lens
tab draws the lens difference. Screenshots: test-artifacts/compare.png, compare-lens.png."""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, open_app, screenshot, wait_for_app

KL = re.compile(r"^(\d+\.\d+) nats$")


@pytest.fixture(scope="module")
def url(app_server, tiny_checkpoint) -> Iterator[str]:
    """The Compare page of a server whose only run is the tiny run (and no bundled model); expect()
    waits up to 30 s meanwhile, since a rerun on 2 shared cores can take seconds."""
    expect.set_options(timeout=30_000)
    try:
        yield app_server(tiny_checkpoint.root, NANOLENS_BUNDLED="") + "/compare"
    finally:
        expect.set_options(timeout=5_000)


def chart(page, title: str):
    """The plotly chart whose title contains `title`."""
    return page.locator("[data-testid='stPlotlyChart']").filter(has=page.locator(".gtitle", has_text=title)).first


def kl(page) -> float:
    """The value of the "Mean KL(A ‖ B)" metric."""
    box = page.get_by_test_id("stMetric").filter(has_text="Mean KL")
    return float(KL.match(box.get_by_test_id("stMetricValue").inner_text().strip()).group(1))


def choose(page, key: str, option: str) -> None:
    box = page.locator(f".st-key-{key} input")
    box.scroll_into_view_if_needed()  # a dropdown opened while the page scrolls closes again
    page.wait_for_timeout(300)
    box.click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_for_app(page)


def tall_screenshot(page, name: str) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its own container, so make the viewport as tall."""
    height = page.evaluate("() => document.querySelector(\"[data-testid='stMain']\").scrollHeight")
    page.set_viewport_size({"width": 1280, "height": min(int(height) + 40, 5000)})
    page.wait_for_timeout(800)  # plotly redraws at the new size
    screenshot(page, name)
    page.set_viewport_size({"width": 1280, "height": 900})


def test_compare_two_snapshots_and_see_the_diff(page, url: str, tiny_checkpoint) -> None:
    first, last = tiny_checkpoint.iters[0], tiny_checkpoint.iters[-1]
    open_app(page, url)
    assert_no_exception(page)
    expect(page.locator(".st-key-cmp_a input")).to_have_value(f"tiny-run · iter {first}")
    expect(page.locator(".st-key-cmp_b input")).to_have_value(f"tiny-run · iter {last}")
    diff = chart(page, "B − A · L0H0 pattern")
    expect(diff).to_be_visible()
    expect(chart(page, "How differently each head attends")).to_be_visible()
    assert kl(page) > 0.01, "an untrained and a trained snapshot predict alike"
    diff.scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # let plotly finish drawing
    before = diff.screenshot()
    tall_screenshot(page, "compare")

    choose(page, "cmp_a", f"tiny-run · iter {last}")
    assert_no_exception(page)
    assert kl(page) == 0.0, "one snapshot against itself has a KL above 0"
    diff = chart(page, "B − A · L0H0 pattern")
    diff.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    assert diff.screenshot() != before, "the difference did not change with checkpoint A"

    choose(page, "cmp_a", f"tiny-run · iter {first}")
    page.get_by_role("tab", name="Logit lens").click()
    wait_for_app(page)
    assert_no_exception(page)
    expect(chart(page, "A · logit lens")).to_be_visible()
    expect(chart(page, "B · logit lens")).to_be_visible()
    expect(chart(page, "B − A · p(actual next token)")).to_be_visible()
    expect(page.get_by_text(re.compile(r"The top guesses agree in \d+% of these cells"))).to_be_visible()
    tall_screenshot(page, "compare-lens")
