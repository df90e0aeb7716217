"""Attention (and Layers) pages in Chromium: a typed prompt shows up as the heatmap's axis labels,
and clicking a block of the all-heads grid opens that head (the header "layer L, head H" follows).
Screenshots: test-artifacts/attention.png, attention-clicked.png, layers.png.

Checks use Playwright's `expect`, which retries until the page agrees: on a busy machine a rerun
can start later than wait_for_app's settle time, and a plain read would see the previous run."""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, open_app, screenshot, wait_for_app

HEADER = re.compile(r"^layer \d+, head \d+$")
EXPECT_TIMEOUT_MS = 30_000  # a rerun with a forward pass, on 2 shared cores, can take a few seconds


@pytest.fixture(autouse=True)
def patient_expect() -> Iterator[None]:
    """`expect` retries for EXPECT_TIMEOUT_MS in these tests (Playwright's default is 5 s)."""
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    try:
        yield
    finally:
        expect.set_options(timeout=5_000)


def type_prompt(page, text: str) -> None:
    """Replace the shared prompt and commit it (Ctrl+Enter submits a Streamlit text area)."""
    box = page.get_by_label("Prompt")
    box.fill(text)
    box.press("Control+Enter")
    wait_for_app(page)


def full_screenshot(page, name: str) -> None:
    """test-artifacts/<name>.png of the whole page: Streamlit scrolls inside its main container, so
    a full-page shot of a 900 px viewport would show only the top. Grow the viewport to fit first."""
    wait_for_app(page)
    height = page.evaluate("document.querySelector(\"[data-testid='stMain']\").scrollHeight")
    page.set_viewport_size({"width": 1280, "height": min(int(height) + 40, 8000)})
    page.wait_for_timeout(800)  # plotly and Vega redraw at the new size
    screenshot(page, name)
    page.set_viewport_size({"width": 1280, "height": 900})


def expect_head(page, layer: int, head: int) -> None:
    """The page's one "layer L, head H" header says (layer, head), and so do the selectboxes."""
    expect(page.get_by_role("heading", name=HEADER)).to_have_text(f"layer {layer}, head {head}")
    expect(page.locator(".st-key-layer input")).to_have_value(str(layer))
    expect(page.locator(".st-key-head input")).to_have_value(str(head))


def click_block(page, layer: int, head: int) -> None:
    """Click a cell of the (layer, head) block of the all-heads grid (Vega-Lite SVG marks carry
    their tooltip fields in aria-label) and wait until that head is open."""
    cells = page.locator("[data-testid='stVegaLiteChart'] "
                         f"path[role='graphics-symbol'][aria-label*='layer {layer}, head {head};']")
    expect(cells.first).to_be_attached()
    cells.nth(cells.count() // 2).click()
    wait_for_app(page)
    expect_head(page, layer, head)
    assert_no_exception(page)


def test_prompt_labels_heatmap_and_grid_click_opens_head(page, live_app: str) -> None:
    open_app(page, live_app + "/attention")
    assert_no_exception(page)
    type_prompt(page, "To be, or not")
    assert_no_exception(page)

    # the pattern heatmap's axes carry the prompt's tokens, made unique by their position
    axes = page.locator("[data-testid='stPlotlyChart']").first.locator(".xaxislayer-above text")
    for label in ("0:T", "1:o", "2:·", "4:e", "5:,", "12:t"):
        expect(axes.filter(has_text=re.compile(f"^{re.escape(label)}$"))).to_have_count(1)
    expect_head(page, 0, 0)
    full_screenshot(page, "attention")

    click_block(page, 1, 1)  # the block of layer 1, head 1 in the Vega-Lite grid
    full_screenshot(page, "attention-clicked")

    # open another head with the selectbox, then click the same block again: it opens again
    head = page.locator(".st-key-head input")
    head.click()
    head.fill("0")
    head.press("Enter")
    wait_for_app(page)
    expect_head(page, 1, 0)
    click_block(page, 1, 1)


def test_layers_page_renders(page, live_app: str) -> None:
    open_app(page, live_app + "/layers")
    assert_no_exception(page)
    expect(page.locator("[data-testid='stPlotlyChart']")).to_have_count(5)  # norms, lens measures, PCA, positions; the lens tables
    expect(page.locator("[data-testid='stPlotlyChart'] .heatmaplayer").first).to_be_attached()
    page.get_by_text("MLP output").click()
    wait_for_app(page)
    expect(page.get_by_text("‖mlp_out‖ by layer and position")).to_have_count(1)
    assert_no_exception(page)
    full_screenshot(page, "layers")


def test_head_table_row_click_opens_head(page, live_app: str) -> None:
    """Issue 6: clicking a row of the head table opens that head. The table is a glide-data-grid
    canvas, so the click goes to the row's marker (the checkbox column at its left edge) by position:
    a 35 px header, then 35 px per row, rows in (layer, head) order: L0H0, L0H1, L1H0, L1H1."""
    open_app(page, live_app + "/attention")
    type_prompt(page, "To be, or not")
    expect_head(page, 0, 0)
    grid = page.locator("[data-testid='stDataFrame']").first
    grid.scroll_into_view_if_needed()
    expect(grid).to_be_visible()
    wait_for_app(page)
    box = grid.bounding_box()
    assert box is not None
    row_h = 35
    page.mouse.click(box["x"] + 14, box["y"] + row_h + 3 * row_h + row_h / 2)  # row 3: L1H1
    wait_for_app(page)
    expect_head(page, 1, 1)
    assert_no_exception(page)
    full_screenshot(page, "attention-head-table")


def ticked_rows(page, n_rows: int) -> list[int]:
    """Rows of the head table whose checkbox is ticked. The table is a canvas: a ticked box is
    filled with the theme's red, an empty one is white, so read the pixel at each box's centre
    (a 35 px header, then 35 px per row; the checkbox column at the left edge)."""
    from io import BytesIO

    from PIL import Image

    grid = page.locator("[data-testid='stDataFrame']").first
    grid.scroll_into_view_if_needed()
    wait_for_app(page)
    img = Image.open(BytesIO(grid.screenshot())).convert("RGB")
    rows = []
    for i in range(n_rows):
        r, g, b = img.getpixel((14, 35 + 35 * i + 17))
        if r > 150 and g < 120 and b < 120:
            rows.append(i)
    return rows


def test_opening_a_head_in_the_grid_moves_the_table_tick(page, live_app: str) -> None:
    """Issue 12, point 15: after a click on L1H1 in the all-heads grid, the head table ticks L1H1,
    not L0H0: every head selector shows the one open head. Rows: L0H0, L0H1, L1H0, L1H1."""
    open_app(page, live_app + "/attention")
    type_prompt(page, "To be, or not")
    expect_head(page, 0, 0)
    assert ticked_rows(page, 4) == [0]
    click_block(page, 1, 1)
    assert ticked_rows(page, 4) == [3]
    full_screenshot(page, "attention-table-follows-grid")


def test_how_to_read_and_the_legends_are_shown(page, live_app: str) -> None:
    """Issue 12, points 11 and 12: the caption, the glyph legend, and the strip in blues."""
    open_app(page, live_app + "/attention")
    type_prompt(page, "To be, or not")
    expect(page.get_by_text("How to read this:")).to_be_visible()
    expect(page.get_by_text("Reading tokens:")).to_have_count(1)
    expect(page.get_by_text(re.compile(r"uniform over its \d+ keys? would be"))).to_be_visible()
    spans = page.locator("[data-testid='stMarkdownContainer'] span[title*='attention=']")
    expect(spans).to_have_count(len("To be, or not"))
    colours = [spans.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(spans.count())]
    rgb = [tuple(int(v) for v in re.findall(r"\d+", c)[:3]) for c in colours]
    assert all(b >= r and b >= g for r, g, b in rgb), rgb  # blues, no red..green
    assert_no_exception(page)
