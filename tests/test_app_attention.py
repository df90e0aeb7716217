"""The Attention page's interaction under AppTest with the tiny trained run (2 layers, 2 heads):
the chosen query drives the strip, the rows and the head view; several heads are overlaid, each in
its own colour, with the values of a recorded forward; the head view draws lines for short prompts;
layer, head and zoom are keyboard-operable widgets bound to the shared state; opened at the last
layer, the grid follows the first figures with the recorded head scores. Clicks themselves
(Plotly selections, the Vega grid) are decoded by pure functions tested in
test_views_attention_long.py and driven in Chromium by tests/e2e/test_attention*.py."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.views import attention_heads as vah
from gpt.checkpoint import load
from gpt.heads import prompt_head_scores
from gpt.record import Recorder

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
PROMPT = "To be, or not to be"


@pytest.fixture
def root(app_root: Path) -> Path:
    return app_root


def open_attention(prompt: str = PROMPT) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.switch_page("screens/attention.py")
    at.session_state["prompt"] = prompt
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at: AppTest) -> dict[str, dict]:
    """The page's plotly figures by their widget key (Streamlit's element id ends with the user key)."""
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def fig(at: AppTest, key: str) -> dict:
    found = [f for k, f in figures(at).items() if k.endswith(key)]
    assert found, f"no chart {key} among {list(figures(at))}"
    return found[0]


def arr(v: Any) -> torch.Tensor:
    """A plotly JSON array as a float32 tensor: a list, or plotly's typed array {dtype, bdata, shape}."""
    if isinstance(v, dict):
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
        shape = v.get("shape")
        if shape:
            a = a.reshape([int(n) for n in str(shape).split(",")])
        return torch.tensor(a.astype(np.float32))
    return torch.tensor(np.asarray(v, dtype=np.float32))


def patterns(root: Path, prompt: str = PROMPT) -> tuple[Recorder, list[int]]:
    model, tok, _ = load(root / "tiny-run")
    ids = tok.encode(prompt)
    rec = Recorder(["blocks.*.attn.hook_pattern"])
    with torch.no_grad():
        model(torch.tensor([ids]), rec=rec)  # (1, T)
    return rec, ids


def test_the_query_drives_the_strip_rows_and_head_view(root: Path) -> None:
    at = open_attention()
    T = len(PROMPT)
    assert at.selectbox(key="attn_query").value == T - 1  # a new prompt opens on its last token
    at.selectbox(key="attn_query").set_value(4).run()
    assert not at.exception
    assert "Where 4:e attends" in [s.value for s in at.subheader]
    strip = fig(at, "attn_strip")["data"][0]
    outlined = [c[0] for c, col in zip(strip["customdata"], strip["marker"]["line"]["color"]) if col == "#e4572e"]
    assert outlined == [4]
    rows = fig(at, "attn_rows")["data"]
    assert all(arr(t["y"]).numel() == 5 for t in rows)  # keys 0..4
    hv = fig(at, "attn_head_view")["data"]
    segs = [y for t in hv if t["mode"] == "lines" for y in t["y"] if y is not None]
    assert segs and set(segs[0::2]) == {4}  # with a query chosen only its lines: (4 -> key)
    # what a strip click does (its on_select sets this key before the rerun), then the page follows
    at.session_state["attn_query"] = 7
    at.run()
    assert "Where 7:o attends" in [s.value for s in at.subheader]


def test_heads_are_overlaid_each_in_its_colour_with_the_recorded_values(root: Path) -> None:
    at = open_attention()
    at.selectbox(key="layer").set_value(1).run()
    at.multiselect(key="attn_heads").set_value([1, 0]).run()
    assert not at.exception
    rec, ids = patterns(root)
    p = rec["blocks.1.attn.hook_pattern"][0]  # (H, T, T)
    q = len(ids) - 1
    rows, cols = fig(at, "attn_rows")["data"], fig(at, "attn_cols")["data"]
    assert [t["name"] for t in rows] == ["H1", "H0"]
    assert [t["line"]["color"] for t in rows] == [vah.colour(0), vah.colour(1)]
    for t, h in zip(rows, (1, 0)):
        torch.testing.assert_close(arr(t["y"]), p[h, q, : q + 1])
    for t, h in zip(cols, (1, 0)):  # what attends to the query token: its column
        torch.testing.assert_close(arr(t["y"]), p[h, :, q])
    hv = fig(at, "attn_head_view")["data"]
    assert {t["line"]["color"] for t in hv if t["mode"] == "lines"} == {vah.colour(0), vah.colour(1)}


def test_layer_head_and_zoom_are_keyboard_widgets_on_the_shared_state(root: Path) -> None:
    """Select boxes (focus, arrows, Enter) for layer and head, bound to the shared "layer"/"head";
    the grid is a Vega chart (its clicks: e2e), the pattern crop covers the whole short prompt."""
    at = open_attention()
    at.selectbox(key="layer").set_value(1).run()
    at.selectbox(key="head").set_value(1).run()
    assert [h.value for h in at.header] == ["layer 1, head 1"]
    assert at.session_state["layer"] == 1 and at.session_state["head"] == 1
    pattern = fig(at, "attn_pattern")["data"][0]
    assert len(pattern["y"]) == len(PROMPT) and pattern["x"][0] == "0:T"
    rec, _ = patterns(root)
    torch.testing.assert_close(arr(pattern["z"]), rec["blocks.1.attn.hook_pattern"][0, 1])
    assert at.get("vega_lite_chart"), "the all-heads grid is missing"
    assert "_at_grid_png" in {b.key for b in at.download_button}  # the grid saves as a PNG (drawn on click)
    assert not at.number_input  # a short prompt needs no zoom controls
    assert any("computed in" in c.value for c in at.caption)
    # every plotly chart keeps its modebar on hover: Download plot as PNG stays available
    configs = [json.loads(c.proto.config) if c.proto.config else {} for c in at.get("plotly_chart")]
    assert configs and all(c.get("displayModeBar") == "hover" for c in configs)


def in_order(node: Any) -> list[Any]:
    """The page's elements in the order they were drawn (AppTest's tree, depth first)."""
    kids = getattr(node, "children", None)
    if not kids:
        return [node]
    return [e for k in sorted(kids) for e in in_order(kids[k])]


def test_the_grid_follows_the_first_figures_opened_at_the_last_layer(root: Path) -> None:
    """Opened at the last layer on a fresh prompt (nothing cached), the first figures come first, then
    the all-heads grid from the trace's second pass, its tooltips holding every layer's head scores as
    a full recorded forward gives them."""
    prompt = PROMPT[::-1]  # a prompt no other test has traced
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.switch_page("screens/attention.py")
    at.session_state["prompt"] = prompt
    at.session_state["layer"] = 1
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [h.value for h in at.header] == ["layer 1, head 0"]
    drawn = in_order(at.main)
    kinds = [(e.type, getattr(e.proto, "id", "")) for e in drawn]
    first = next(i for i, (t, key) in enumerate(kinds) if t == "plotly_chart" and key.endswith("attn_pattern"))
    grid = next(i for i, (t, _) in enumerate(kinds) if t == "vega_lite_chart")
    assert first < grid  # the grid is drawn after the open layer's figures
    spec = json.loads(drawn[grid].proto.spec)
    assert spec["layer"][0]["data"]["values"][0]["url"].startswith("data:image/png;base64,")
    rec, _ = patterns(root, prompt)
    want = prompt_head_scores([rec[f"blocks.{i}.attn.hook_pattern"][0] for i in range(2)])  # (L, H) each
    rects = spec["layer"][1]["data"]["values"]
    assert len(rects) == 4  # 2 layers x 2 heads
    for r in rects:
        for k in ("entropy", "prev_token", "first_token"):
            assert abs(r[k] - float(want[k][r["layer"], r["head"]])) <= 1e-3, (r, k)
