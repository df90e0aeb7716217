"""Deep links in Chromium: a URL with model, prompt, layer, head and pos opens that view on the
Attention page, the address bar and the sidebar's "Link to this view" follow it, garbage parameters
show a note and the default view; the Home page also answers at /home (not "Page not found").
Screenshots: test-artifacts/deeplink.png, deeplink-home.png."""
from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlparse

from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, open_app, screenshot

MAIN = "[data-testid='stMain']"


def test_a_deep_link_opens_its_view(page, live_app: str, tiny_checkpoint) -> None:
    params = {"model": str(tiny_checkpoint.run_dir), "prompt": "To be, or not", "layer": "1", "head": "1",
              "pos": "3"}
    open_app(page, f"{live_app}/attention?{urlencode(params)}", timeout_ms=120_000)  # a cold server, 2 busy cores
    assert_no_exception(page)
    expect(page.get_by_role("heading", name="layer 1, head 1")).to_be_visible()
    expect(page.get_by_label("Prompt")).to_have_value("To be, or not")
    expect(page.locator(MAIN).get_by_text("Where 3:b attends", exact=True)).to_be_visible()  # pos 3 is the query
    got = parse_qs(urlparse(page.url).query)  # the address bar keeps the view
    assert got["layer"] == ["1"] and got["head"] == ["1"] and got["pos"] == ["3"], page.url
    side = page.locator("[data-testid='stSidebar']")
    side.get_by_text("Link to this view").click()
    code = side.locator("[data-testid='stCode']").first
    expect(code).to_contain_text(f"{live_app}/attention?")
    expect(code).to_contain_text("layer=1&head=1")
    page.mouse.move(0, 0)
    screenshot(page, "deeplink")


def test_garbage_parameters_show_a_note_and_the_default_view(page, live_app: str) -> None:
    open_app(page, f"{live_app}/attention?{urlencode({'model': '/no/such', 'layer': '99', 'head': '-1', 'pos': 'x'})}")
    assert_no_exception(page)
    main = page.locator(MAIN)
    expect(main.get_by_text("`model=").first.or_(main.get_by_text("cannot be loaded").first)).to_be_visible()
    expect(main.get_by_text("layer=99")).to_be_visible()
    expect(page.get_by_role("heading", name="layer 0, head 0")).to_be_visible()


def test_the_home_page_answers_at_its_own_path(page, live_app: str) -> None:
    open_app(page, f"{live_app}/home")
    assert_no_exception(page)
    expect(page.get_by_role("heading", name="nanolens", exact=True)).to_be_visible()
    assert page.get_by_text("Page not found").count() == 0
    assert urlparse(page.url).path == "/home"
    screenshot(page, "deeplink-home")
