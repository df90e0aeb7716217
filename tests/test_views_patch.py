"""app.views.patch: the sweep heatmap carries each cell's normalized value and raw metric, and a
click decodes back to the cell that gpt.patching.patched_logits takes."""
from __future__ import annotations

import plotly.colors
import plotly.graph_objects as go
import pytest
import torch

from app.views import patch as vp
from gpt import patching
from gpt.config import GPTConfig
from gpt.model import GPT


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=8, dropout=0.0)).eval()


def test_position_map_values_and_hover(model: GPT) -> None:
    clean, corrupt = [1, 2, 3, 4, 5], [1, 2, 7, 4, 5]
    res = patching.sweep(model, clean, corrupt, "resid_pre", patching.logit_diff(3, 6))
    fig = vp.heatmap_figure(res.normalized(), res.values, res.dims, list("abcde"), res.metric)
    go.Figure(fig.to_dict())  # validates the unvalidated figure
    tr = fig.data[0]
    assert len(tr.x) == 2 * 5 and tr.marker.symbol == "square"
    for (l, p, raw), color in zip(tr.customdata, tr.marker.color):
        assert raw == pytest.approx(float(res.values[l, p]))
        assert color == pytest.approx(float((res.values[l, p] - res.corrupt) / (res.clean - res.corrupt)), abs=1e-5)
    assert "customdata[2]" in tr.hovertemplate and res.metric in tr.hovertemplate


def test_head_pos_rows_are_layer_heads(model: GPT) -> None:
    res = patching.sweep(model, [1, 2, 3], [1, 9, 3], "head_pos", patching.logit_diff(3, 6))
    fig = vp.heatmap_figure(res.normalized(), res.values, res.dims, list("abc"), res.metric)
    tr = fig.data[0]
    assert len(tr.x) == 2 * 2 * 3 and tr.y[3] == "L0H1"
    for *cell, raw in tr.customdata:
        assert raw == pytest.approx(float(res.values[tuple(cell)]))


def test_cell_pick_decodes_clicks() -> None:
    event = {"selection": {"points": [{"x": "b", "y": "L1", "customdata": [1, 3, 0.5]}]}}
    assert vp.cell_pick(event, (2, 5)) == (1, 3)
    assert vp.cell_pick(event, (2, 3)) is None  # a stale click outside this result
    assert vp.cell_pick({"selection": {"points": []}}, (2, 5)) is None
    assert vp.cell_pick(None, (2, 5)) is None


def test_top_next_shows_the_argmax_first() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0]])
    fig = vp.top_next(logits, lambda i: "xyz"[i], k=2)
    assert fig.data[0].y[0] == "1. y" and fig.data[0].x[0] == pytest.approx(torch.softmax(logits[0], 0)[1].item())


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_caption_names_the_metric_and_the_colours_the_map_draws(model: GPT, direction: str) -> None:
    res = patching.sweep(model, [1, 2, 3], [1, 9, 3], "resid_pre", patching.prob(3), direction=direction)
    cap = vp.caption("prob", direction, ("c", "x"), res.clean, res.corrupt, "run · iter 10")
    assert "p('c')" in cap and f"clean run {res.clean:.4g}, corrupted run {res.corrupt:.4g}" in cap
    assert ("prompt, with this one activation taken from the " + ("clean" if direction == "denoise" else "corrupted")
            + " run of run · iter 10") in cap
    # the colour the caption names for 1 is the one the figure draws at the top of its scale
    marker = vp.heatmap_figure(res.normalized(), res.values, res.dims, list("abc"), "p").data[0].marker
    assert marker.cmid == 0 and not marker.reversescale  # the scale's middle is 0, its top end 1 and beyond
    scale = marker.colorscale
    (lo, bottom), (mid, middle), (hi, top) = scale[0], scale[len(scale) // 2], scale[-1]
    assert (lo, mid, hi) == (0, 0.5, 1)

    def name(colour: str) -> str | None:  # the channel that dominates: red or blue
        rgb = plotly.colors.unlabel_rgb(colour)
        return {0: "red", 2: "blue"}.get(max(range(3), key=lambda i: rgb[i]))
    assert f"1 ({name(top)})" in cap and f"below 0 ({name(bottom)})" in cap
    assert len(set(plotly.colors.unlabel_rgb(middle))) == 1 and "0 (grey)" in cap  # r = g = b: grey
    assert vp.metric_label("logit_diff", ("c", "x")) == "logit('c') − logit('x')"
