"""The Walkthrough page in Chromium with the tiny run: choosing the attention stage (with the
selector, and by clicking its box in the diagram) opens it up down to the q·kᵀ heatmap."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, click_point, open_app, screenshot, wait_for_app

ATTN = "Multi-head self-attention"
N_TOP = 8  # tiny model (2 layers): ids, wte, wpe, +, block 0, block 1, ln_f, lm_head; then the block's inside
ATTN_POINT = N_TOP + 1  # LN 1, attn, +, LN 2, MLP, +


def _stage_selector(page):
    return page.get_by_test_id("stSelectbox").filter(has_text="Stage")


def _qk_chart(page):
    """The plotly chart with a panel titled q·kᵀ (the scores before the mask)."""
    return page.locator("[data-testid='stPlotlyChart']").filter(
        has=page.locator(".annotation-text", has_text="q·kᵀ/√"))


def test_attention_stage_shows_qk_heatmap(page, live_app: str) -> None:
    page.set_viewport_size({"width": 1280, "height": 3000})  # the diagram and the opened head in one shot
    open_app(page, live_app + "/walkthrough")
    assert_no_exception(page)
    diagram = page.locator("[data-testid='stPlotlyChart']").first
    assert diagram.locator(".scatterlayer .point").count() == N_TOP + 6, "one box per stage of a 2-layer model"
    assert _qk_chart(page).count() == 0, "attention is not the default stage"

    _stage_selector(page).locator("input").click()
    page.get_by_role("option", name=ATTN, exact=True).click()
    wait_for_app(page)
    assert_no_exception(page)
    heading = page.get_by_role("heading", name="scaled scores q·kᵀ/√d")
    assert heading.count() == 1 and heading.first.is_visible()
    chart = _qk_chart(page)
    assert chart.count() == 1
    chart.first.scroll_into_view_if_needed()
    assert chart.first.locator(".heatmaplayer image").count() >= 6, "the six step panels are drawn"
    assert page.get_by_role("heading", name="Inside attention: head 0 of block 0").count() == 1
    page.get_by_role("heading", name="Walkthrough").first.scroll_into_view_if_needed()
    shot = screenshot(page, "walkthrough")
    assert shot.stat().st_size > 10_000


def test_clicking_the_attention_box_selects_it(page, live_app: str) -> None:
    page.set_viewport_size({"width": 1280, "height": 1400})
    open_app(page, live_app + "/walkthrough")
    point = page.locator("[data-testid='stPlotlyChart']").first.locator(".scatterlayer .point").nth(ATTN_POINT)
    click_point(page, point)
    # the selection reaches the server a moment after the click: wait for its rerun's result
    expect(_stage_selector(page).locator("input")).to_have_value(ATTN, timeout=30_000)
    wait_for_app(page)
    assert_no_exception(page)
    expect(page.get_by_role("heading", name="scaled scores q·kᵀ/√d")).to_have_count(1)
    screenshot(page, "walkthrough-click")


def test_twelve_layer_diagram_labels_do_not_overlap(page, app_server, tmp_path) -> None:
    """Issue 12, point 17: with 12 layers the shape labels under ln_f and lm_head ran into each
    other. A random 12-layer model: no two shape labels' boxes intersect in the browser."""
    import torch

    from gpt.checkpoint import save
    from gpt.config import GPTConfig
    from gpt.model import GPT
    from gpt.tokenizer import CharTokenizer

    tok = CharTokenizer(sorted(set("ROMEO:\nBut soft, what light through yonder window breaks?")))
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=12, n_head=4, n_embd=32, block_size=64, vocab_size=tok.vocab_size))
    ckpt = save(tmp_path / "twelve", model, tok)
    (tmp_path / "root").mkdir()
    url = app_server(tmp_path / "root", NANOLENS_BUNDLED=str(ckpt))
    page.set_viewport_size({"width": 1280, "height": 1400})
    open_app(page, url + "/walkthrough")
    assert_no_exception(page)
    diagram = page.locator("[data-testid='stPlotlyChart']").first
    assert diagram.locator(".scatterlayer .point").count() == 4 + 12 + 2 + 6
    labels = diagram.locator(".annotation-text").filter(has_text=re.compile(r"^\(\d"))
    boxes = [labels.nth(i).bounding_box() for i in range(labels.count())]
    assert len(boxes) >= 10
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                     or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])
            assert apart, (a, b)
    screenshot(page, "walkthrough-12-layers")
