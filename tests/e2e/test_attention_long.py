"""The Attention page at T=1024 in Chromium, on a GPT-2-small-shaped random model (12 layers, 12 heads,
768 wide, GPT-2's vocabulary): everything the server sends for the page (websocket frames received,
summed) stays under 5 MB, the zoom shows its window at full resolution and moves, the keyboard
never lands on a Plotly modebar button, and the layer moves with the keyboard.
Screenshot: test-artifacts/attention-long.png (and attention-long-zoomed.png)."""
from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import assert_no_exception, open_app, screenshot, wait_for_app

PAYLOAD_LIMIT = 5 * 1024 * 1024  # bytes, the bound for the whole page
SLOW_MS = 600_000  # a 124M-parameter forward at T=1024 on 2 shared cores


@pytest.fixture(scope="module")
def gpt2_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A native checkpoint of a random GPT-2-small-shaped model (fp16 on disk, 250 MB)."""
    import torch

    from gpt.checkpoint import save
    from gpt.config import GPTConfig
    from gpt.model import GPT
    from gpt.tokenizer import GPT2Tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, dropout=0.0))
    return save(tmp_path_factory.mktemp("gpt2-small") / "gpt2-small-random", model, GPT2Tokenizer(),
                dtype=torch.float16)


@pytest.fixture(autouse=True)
def patient_expect() -> Iterator[None]:
    expect.set_options(timeout=SLOW_MS)
    try:
        yield
    finally:
        expect.set_options(timeout=5_000)


def long_text(n_words: int = 1300) -> str:
    """Plain words: more than 1024 GPT-2 tokens (the page keeps the last 1024, with a notice)."""
    words = "the of and to in is was for on that with as by at from his her it be are this which or".split()
    rng = random.Random(0)
    return " ".join(rng.choice(words) + rng.choice(["", ",", "."]) for _ in range(n_words))


def query_rows(page) -> list[int]:
    """The positions on the zoomed pattern heatmap's query axis (its tick labels "896:·to", ...)."""
    chart = page.locator("[data-testid='stPlotlyChart']").first
    texts = chart.locator(".yaxislayer-above text").evaluate_all("els => els.map(e => e.textContent)")
    return [int(t.split(":", 1)[0]) for t in texts if t and ":" in t]


def test_attention_at_1024_tokens_is_small_and_zooms(page, app_server, gpt2_small: Path, tmp_path) -> None:
    received: list[int] = []

    def on_ws(ws) -> None:
        ws.on("framereceived", lambda payload: received.append(len(payload)))
    page.on("websocket", on_ws)
    page.set_default_timeout(SLOW_MS)
    (tmp_path / "root").mkdir()
    url = app_server(tmp_path / "root", NANOLENS_BUNDLED=str(gpt2_small))
    open_app(page, url + "/attention", timeout_ms=SLOW_MS)
    box = page.get_by_label("Prompt")
    box.fill(long_text())
    box.press("Control+Enter")
    wait_for_app(page, timeout_ms=SLOW_MS)
    # the whole page, not only the first figures: the grid's caption (64×64 cells at this length; the
    # previous, short prompt's says fewer) is drawn after the trace's second pass; under load the
    # rerun may start after wait_for_app's settle time, so wait for it explicitly
    expect(page.get_by_text(re.compile(r"block-max pooled to 64×64 cells"))).to_be_visible()
    wait_for_app(page, timeout_ms=SLOW_MS)
    assert_no_exception(page)
    expect(page.get_by_text(re.compile(r"only the last 1024 are used"))).to_be_visible()
    expect(page.get_by_role("heading", name="layer 0, head 0")).to_be_visible()

    # the overview is an image, the zoom a 128 x 128 heatmap ending at the last query
    expect(page.locator("[data-testid='stImage'] img").first).to_be_visible()
    rows = query_rows(page)  # plotly thins the tick labels: check their range
    assert rows and min(rows) >= 896 and max(rows) >= 1018 and max(rows) <= 1023, rows
    sent = sum(received)
    assert sent <= PAYLOAD_LIMIT, f"{sent / 1e6:.2f} MB received for the page"
    print(f"\nattention at T=1024: {sent / 1e6:.2f} MB received over the websocket")

    # Tab through the page: focus reaches widgets, never a modebar button
    page.locator(".st-key-layer input").focus()
    seen = []
    for _ in range(40):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("() => { const e = document.activeElement; "
                                  "return (e.className && e.className.baseVal !== undefined ? e.className.baseVal "
                                  ": String(e.className)) + '|' + e.tagName }"))
    assert not [s for s in seen if "modebar" in s], seen
    screenshot_full(page, "attention-long")

    # the all-heads grid: one PNG under one clickable rectangle per head; a click opens that head
    cells = page.locator("[data-testid='stVegaLiteChart'] path[role='graphics-symbol'][aria-label*='layer 2, head 3;']")
    expect(cells.first).to_be_attached()
    assert page.locator("[data-testid='stVegaLiteChart'] image").count() >= 1
    cells.first.scroll_into_view_if_needed()
    cells.first.click()
    wait_for_app(page, timeout_ms=SLOW_MS)
    expect(page.get_by_role("heading", name="layer 2, head 3")).to_be_visible()
    assert_no_exception(page)
    assert not page.get_by_text(re.compile(r"TypeError|Error:")).count(), "a chart failed to draw"

    # move the zoom with the keyboard: the heatmap's first query follows
    zq = page.locator(".st-key-attn_zoom_q input")
    zq.fill("0")
    zq.press("Enter")
    wait_for_app(page, timeout_ms=SLOW_MS)
    page.wait_for_function("""() => { const c = document.querySelector("[data-testid='stPlotlyChart']");
        const t = [...c.querySelectorAll('.yaxislayer-above text')].map(e => parseInt(e.textContent));
        return t.length && Math.min(...t) === 0 && Math.max(...t) < 128; }""", timeout=SLOW_MS)
    # the layer moves with the keyboard: focus the select box, arrow down, Enter
    layer = page.locator(".st-key-layer input")
    layer.focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    wait_for_app(page, timeout_ms=SLOW_MS)
    expect(page.get_by_role("heading", name=re.compile(r"^layer [3-9]\d*, head 3$"))).to_be_visible()
    assert_no_exception(page)
    screenshot_full(page, "attention-long-zoomed")


def screenshot_full(page, name: str) -> None:
    """The whole page (Streamlit scrolls inside its main container: grow the viewport to fit)."""
    height = page.evaluate("document.querySelector(\"[data-testid='stMain']\").scrollHeight")
    page.set_viewport_size({"width": 1280, "height": min(int(height) + 40, 9000)})
    page.wait_for_timeout(1000)
    screenshot(page, name)
    page.set_viewport_size({"width": 1280, "height": 900})
