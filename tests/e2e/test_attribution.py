"""Attribution page in Chromium: click a head in the layer x head grid and see its attention pattern
and contribution map side by side, click the top head and see its two maps; on the Information flow
tab, move the threshold and see the graph change, click a node and see its logit lens.
Screenshots: test-artifacts/attribution.png, attribution-graph.png."""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, open_app, screenshot, wait_for_app

PROMPT = "To be, or not to be"
N_HEAD = 2  # the tiny run: 2 layers x 2 heads
COUNTS = re.compile(r"(\d+) nodes and (\d+) edges above (\d\.\d{3})")


@pytest.fixture(autouse=True)
def patient_expect() -> Iterator[None]:
    expect.set_options(timeout=30_000)  # a rerun on 2 shared cores can take seconds
    try:
        yield
    finally:
        expect.set_options(timeout=5_000)


def chart(page, title: str):
    """The plotly chart whose title contains `title`."""
    return page.locator("[data-testid='stPlotlyChart']").filter(has=page.locator(".gtitle", has_text=title)).first


def click_point(page, points, i: int) -> None:
    """Hover, then click point i (plotly picks the clicked point from its hover data)."""
    box = points.nth(i).bounding_box()
    assert box is not None, f"point {i} is not drawn"
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.wait_for_timeout(200)
    page.mouse.click(x, y)
    wait_for_app(page)


def open_head(page, layer: int, head: int) -> None:
    grid = chart(page, "Head terms").locator(".scatterlayer .point")
    expect(grid).to_have_count(2 * N_HEAD)
    click_point(page, grid, layer * N_HEAD + head)
    expect(page.get_by_text(f"Head L{layer}H{head}: where it looks, and what it wrote")).to_be_visible()
    expect(chart(page, f"L{layer}H{head} attention pattern")).to_be_visible()
    expect(chart(page, f"L{layer}H{head} contribution map")).to_be_visible()


def counts(page) -> tuple[int, int, str]:
    text = page.get_by_text(COUNTS).first.inner_text()
    n, m, t = COUNTS.search(text).groups()
    return int(n), int(m), t


def test_click_top_head_then_move_the_threshold(page, live_app: str) -> None:
    open_app(page, live_app + "/attribution")
    box = page.get_by_label("Prompt")
    box.fill(PROMPT)
    box.press("Control+Enter")
    wait_for_app(page)
    assert_no_exception(page)
    expect(chart(page, "Largest terms of logit").locator(".gtitle")).to_contain_text(f"{len(PROMPT) - 1}:e")

    top = page.get_by_text(re.compile(r"^Top head: L\d+H\d+")).first.inner_text()
    layer, head = map(int, re.search(r"L(\d+)H(\d+)", top).groups())
    other = (1 - layer, head)  # first open another head, so the top head's click visibly changes the maps
    open_head(page, *other)
    open_head(page, layer, head)
    assert_no_exception(page)
    page.set_viewport_size({"width": 1280, "height": 1400})
    page.wait_for_timeout(600)
    screenshot(page, "attribution")

    page.get_by_role("tab", name="Information flow").click()
    wait_for_app(page)
    graph_nodes = chart(page, "Routes to the prediction").locator(".scatterlayer .trace").last.locator(".point")
    expect(page.get_by_text(COUNTS)).to_be_visible()
    n0, m0, t0 = counts(page)
    assert t0 == "0.040" and graph_nodes.count() == n0
    page.get_by_role("slider").first.press("Home")  # the threshold to 0: every route to the prediction
    wait_for_app(page)
    expect(page.get_by_text(re.compile(r"edges above 0\.000"))).to_be_visible()
    n1, m1, _ = counts(page)
    assert n1 > n0 and m1 > m0
    expect(graph_nodes).to_have_count(n1)
    page.get_by_role("slider").first.press("End")  # to 0.1, LLM-TT's largest
    wait_for_app(page)
    expect(page.get_by_text(re.compile(r"edges above 0\.100"))).to_be_visible()
    n2, m2, _ = counts(page)
    assert m2 <= m0 and n2 >= 1
    expect(graph_nodes).to_have_count(n2)

    click_point(page, graph_nodes, 0)  # the lowest node: an embedding
    expect(chart(page, "embedding at")).to_be_visible()
    assert_no_exception(page)
    page.wait_for_timeout(600)
    screenshot(page, "attribution-graph")
