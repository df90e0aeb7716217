"""The long-context Attention views and the lazy per-layer trace behind them, against independent
references: block-max pooling against a per-block loop, the zoom crop against the recorded pattern's
slice, AttentionTrace against a full recorded forward (with and without an edit): the open layer
alone first (the blocks before it fused, nothing after its pattern computed), the other layers'
digests in the second pass; the PNGs decoded back to their levels, the grid's click overlay, and the
BertViz-style head view's lines."""
from __future__ import annotations

import io
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

from app.views import attention_heads as vah
from app.views import attention_long as val
from gpt.attention_trace import AttentionTrace, block_max, pattern_tops
from gpt.heads import head_scores_from_pattern
from gpt.config import GPTConfig
from gpt.edit import Edits
from gpt.model import GPT
from gpt.record import Recorder


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, vocab_size=50, block_size=96, dropout=0.0)).eval()


def recorded(model: GPT, ids: list[int], edit: Edits | None = None) -> Recorder:
    rec = Recorder(["blocks.*.attn.hook_pattern", "blocks.*.attn.hook_attn_scores"])
    with torch.no_grad():
        model(torch.tensor([ids]), rec=rec, edit=edit)  # (1, T)
    return rec


def slow_block_max(m: torch.Tensor, side: int) -> torch.Tensor:
    """Per-block loop with adaptive pooling's block bounds: rows floor(i*T/S) .. ceil((i+1)*T/S)-1."""
    T = m.size(-1)
    out = torch.empty(side, side)
    for i in range(side):
        r0, r1 = (i * T) // side, math.ceil((i + 1) * T / side)
        for j in range(side):
            c0, c1 = (j * T) // side, math.ceil((j + 1) * T / side)
            out[i, j] = m[r0:r1, c0:c1].max()
    return out


@pytest.mark.parametrize("T,side", [(64, 16), (100, 7), (37, 37), (20, 64)])
def test_block_max_equals_a_per_block_loop(T: int, side: int) -> None:
    g = torch.Generator().manual_seed(T)
    m = torch.rand(T, T, generator=g)
    got = block_max(m, side)
    want = slow_block_max(m, min(side, T)) if side < T else m
    assert torch.equal(got, want)
    two = block_max(torch.stack([m, 2 * m]), side)  # leading dims pool independently
    assert torch.equal(two[1], block_max(2 * m, side))


def test_block_max_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="square"):
        block_max(torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="side must be"):
        block_max(torch.zeros(3, 3), 0)


@pytest.mark.parametrize("use_edit", [False, True])
def test_trace_equals_a_full_recorded_forward(model: GPT, use_edit: bool) -> None:
    ids = torch.randint(50, (80,), generator=torch.Generator().manual_seed(1)).tolist()
    edit = Edits().ablate_heads(0, [1]) if use_edit else None
    rec = recorded(model, ids, edit)
    tr = AttentionTrace(model, ids, edit)
    assert tr.pattern(0).shape == (4, 80, 80) and tr.layers_run == 0 and tr.digested == (0,)  # lazy: layer 0 only
    for layer in (2, 0, 1, 2):  # out of order, and again after its pattern was dropped (KEEP_LAYERS=2)
        torch.testing.assert_close(tr.pattern(layer), rec[f"blocks.{layer}.attn.hook_pattern"][0])
        torch.testing.assert_close(tr.scores(layer), rec[f"blocks.{layer}.attn.hook_attn_scores"][0])
    d = tr.digests()
    assert len(d) == 3
    p1 = rec["blocks.1.attn.hook_pattern"][0]  # (H, T, T); T=80 > 64: pooled
    # the blocks before an open layer run fused (SDPA): equal to the recorded path within float error
    torch.testing.assert_close(d[1].thumbs, block_max(p1, tr.thumb_side), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d[1].tops, p1[:, 1:].amax(dim=(-1, -2)))
    torch.testing.assert_close(d[1].prev_token, p1.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1))


def digest_parts(p: torch.Tensor, side: int) -> dict[str, torch.Tensor]:
    """A layer's digest straight from its recorded patterns (H, T, T): the independent reference."""
    return {"thumbs": block_max(p, side), "tops": pattern_tops(p), **head_scores_from_pattern(p)}


def assert_digest(d, p: torch.Tensor, side: int) -> None:
    for k, want in digest_parts(p, side).items():
        torch.testing.assert_close(getattr(d, k), want, atol=1e-5, rtol=1e-5, msg=k)


@pytest.mark.parametrize("use_edit", [False, True])
@pytest.mark.parametrize("open_layer", [0, 1, 2])
def test_the_open_layer_alone_first_then_the_others_as_a_full_recording(model: GPT, use_edit: bool,
                                                                          open_layer: int) -> None:
    """Opening a layer on a fresh trace digests that layer alone, its pattern and scores equal to a
    full recorded forward's (the blocks before it ran fused); the second pass then gives every other
    layer's digest as the full recording's patterns give it, and the open layer's is unchanged."""
    ids = torch.randint(50, (90,), generator=torch.Generator().manual_seed(4)).tolist()
    edit = Edits().ablate_heads(0, [1, 2]).ablate_mlp(1, "mean") if use_edit else None
    rec = recorded(model, ids, edit)
    tr = AttentionTrace(model, ids, edit, thumb_side=16)  # 90 tokens pooled to 16 x 16: real block-max
    p = rec[f"blocks.{open_layer}.attn.hook_pattern"][0]  # (H, T, T)
    torch.testing.assert_close(tr.pattern(open_layer), p, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tr.scores(open_layer), rec[f"blocks.{open_layer}.attn.hook_attn_scores"][0],
                               atol=1e-5, rtol=1e-5)
    assert tr.digested == (open_layer,) and tr.layers_run == open_layer  # no other layer digested yet
    first = tr.digest(open_layer)
    assert_digest(first, p, 16)
    d = tr.digests()
    assert tr.digested == (0, 1, 2) and d[open_layer] is first
    for layer in range(3):
        assert_digest(d[layer], rec[f"blocks.{layer}.attn.hook_pattern"][0], 16)


def test_the_open_layer_stops_at_its_pattern(model: GPT) -> None:
    """Nothing after the open layer's pattern runs (its MLP is never called) until a later layer
    needs that block's output; an identity edit counts the calls and changes nothing."""
    calls: list[int] = []

    def seen(layer: int):
        def fn(a: torch.Tensor) -> torch.Tensor:
            calls.append(layer)
            return a
        return fn
    count = Edits({f"blocks.{i}.mlp.hook_pre": seen(i) for i in range(3)})
    ids = torch.randint(50, (40,), generator=torch.Generator().manual_seed(5)).tolist()
    tr = AttentionTrace(model, ids, count)
    tr.pattern(1)
    assert calls == [0]  # block 0 ran through to its output; block 1 stopped after its pattern
    tr.digests()
    assert calls == [0, 1]  # block 1's output for layer 2's input; block 2's MLP never needed
    plain = AttentionTrace(model, ids)
    for layer in range(3):
        torch.testing.assert_close(tr.pattern(layer), plain.pattern(layer))


def test_trace_refuses_empty_and_too_long(model: GPT) -> None:
    with pytest.raises(ValueError, match="at least one token"):
        AttentionTrace(model, [])
    with pytest.raises(ValueError, match="block_size"):
        AttentionTrace(model, [1] * 97)
    with pytest.raises(ValueError, match="layer must be"):
        AttentionTrace(model, [1, 2]).pattern(3)


def test_zoom_crop_is_the_slice_of_the_recorded_pattern(model: GPT) -> None:
    ids = torch.randint(50, (90,), generator=torch.Generator().manual_seed(2)).tolist()
    p = recorded(model, ids)["blocks.2.attn.hook_pattern"][0, 3]  # (T, T)
    labels = [f"{i}:x" for i in range(90)]
    window = val.zoom_window(90, query=70, size=32)
    assert window == (39, 71, 39, 71)  # the diagonal block ending at the query
    top = val.crop_top(p, window)
    assert top == float(p[39:71, 39:71].max())  # the window's own top (row 0 is not in it)
    assert val.crop_top(p, (0, 90, 0, 90)) == float(pattern_tops(p))  # the whole: as the full heatmap
    fig = val.crop_figure(p, labels, window, "t", "pattern", top=top)
    z = np.asarray(fig.data[0].z)
    assert np.array_equal(z, p[39:71, 39:71].numpy())
    assert list(fig.data[0].x) == labels[39:71] and list(fig.data[0].y) == labels[39:71]
    go.Figure(fig.to_dict())  # valid plotly
    assert val.zoom_window(90, 5, q0=500, k0=-3, size=32) == (58, 90, 0, 32)  # clamped inside
    assert val.zoom_window(10, 9) == (0, 10, 0, 10)  # short prompts: the whole pattern


def test_overview_png_holds_the_pooled_levels_and_the_zoom_box() -> None:
    m = torch.rand(300, 300, generator=torch.Generator().manual_seed(3)).tril()
    ov = val.overview(m, top=1.0, window=None, side=100, px=100)
    img = np.asarray(Image.open(io.BytesIO(ov.png)).convert("RGB"))
    assert img.shape == (100, 100, 3) and ov.side == 100 and ov.cell == 3.0
    want = val.lut()[val.quantize(block_max(m, 100), 1.0, val.log_floor(300))]
    assert np.array_equal(img, want)  # lossless: the colours are exactly the quantized levels
    boxed = np.asarray(Image.open(io.BytesIO(val.overview(m, 1.0, (0, 150, 0, 150), 100, 100).png)).convert("RGB"))
    assert tuple(boxed[0, 20]) == (228, 87, 46) and not np.array_equal(boxed, img)  # the orange box


def test_quantize_linear_and_log_scales() -> None:
    v = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert val.quantize(v, 0.5).tolist() == [0, 128, 255, 255]  # linear, clipped at top
    lv = val.quantize(torch.tensor([0.0, 1e-3, 1e-2, 1e-1]), 1e-1, floor=1e-3)
    assert lv.tolist() == [0, 0, 128, 255]  # log: each decade half the range


def test_grid_png_places_every_head_and_the_overlay_maps_clicks() -> None:
    from app.views.attention import grid_pick

    levels = np.zeros((3, 4, 16, 16), dtype=np.uint8)
    levels[2, 1] = 255  # one head fully dark
    data, px = val.grid_png(levels, gap=8)
    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert px == 48 and img.shape == (3 * 56 - 8, 4 * 56 - 8, 3)
    assert tuple(img[2 * 56 + 5, 1 * 56 + 5]) == tuple(val.lut()[255])  # L2H1's block
    assert tuple(img[2 * 56 + 5, 2 * 56 + 5]) == tuple(val.lut()[0])
    assert tuple(img[50, 50]) == (255, 255, 255)  # the gap
    spec = val.grid_image_spec(data, 3, 4, px, selected=(2, 1), summary={"entropy": torch.ones(3, 4)})
    rects = spec["layer"][1]["data"]["values"]
    assert len(rects) == 12 and rects[9]["label"] == "layer 2, head 1"
    assert rects[9]["x0"] == val.GRID_PAD[0] + 56 and rects[9]["y0"] == val.GRID_PAD[1] + 2 * 56
    assert spec["layer"][0]["data"]["values"][0]["url"].startswith("data:image/png;base64,")
    event = {"selection": {val.GRID_PARAM: [{"layer": 2, "head": 1}]}}
    assert grid_pick(event, 3, 4) == (2, 1)


def test_head_view_draws_a_line_per_weight_in_each_heads_colour() -> None:
    T = 6
    p = torch.zeros(2, T, T)
    for i in range(T):
        p[0, i, 0] = 1.0  # head 0: everything on the first token
        p[1, i, i] = 1.0  # head 1: everything on itself
    fig = vah.head_view(p, [0, 1], [f"t{i}" for i in range(T)])
    lines = [t for t in fig.data if t.mode == "lines"]
    assert {t.line.color for t in lines} == {vah.colour(0), vah.colour(1)}
    for c, h in ((0, 0), (1, 1)):
        xs = [x for t in lines if t.line.color == vah.colour(c) for x in t.y]
        pairs = {(xs[k], xs[k + 1]) for k in range(0, len(xs), 3)}  # (query, key) of each segment
        assert pairs == ({(i, 0) for i in range(T)} if h == 0 else {(i, i) for i in range(T)})
    only = vah.head_view(p, [1], [f"t{i}" for i in range(T)], query=3)
    segs = [y for t in only.data if t.mode == "lines" for y in t.y if y is not None]
    assert segs == [3, 3]  # with a query, only its line
    with pytest.raises(ValueError, match="at most"):
        vah.head_view(torch.zeros(1, 65, 65), [0], ["x"] * 65)
    go.Figure(fig.to_dict())


def test_overlays_rows_and_columns_and_the_strip_click() -> None:
    p = torch.softmax(torch.randn(3, 8, 8).masked_fill(~torch.ones(8, 8, dtype=torch.bool).tril(), -1e9), -1)
    rows = vah.head_rows(p, [0, 2], 5)
    assert list(rows) == ["H0", "H2"] and torch.equal(rows["H2"], p[2, 5, :6])
    cols = vah.head_columns(p, [1], 3)
    assert torch.equal(cols["H1"], p[1, :, 3]) and float(cols["H1"][:3].sum()) == 0.0  # earlier queries can't see it
    fig = vah.overlay_figure(rows, [str(i) for i in range(8)], "t", "key", mark=5)
    assert [t.line.color for t in fig.data] == [vah.colour(0), vah.colour(1)]
    go.Figure(fig.to_dict())
    strip = vah.token_strip([f"t{i}" for i in range(8)], p[0, 7], 7, start=100)
    assert strip.data[0].customdata[2][0] == 102
    assert vah.token_pick({"selection": {"points": [{"customdata": [102, 0.1]}]}}, 200) == 102
    assert vah.token_pick({"selection": {"points": [{"customdata": [500, 0.1]}]}}, 200) is None
    assert vah.token_pick({"selection": {"points": []}}, 200) is None
    with pytest.raises(ValueError, match="weights"):
        vah.token_strip(["a"], torch.zeros(2), 0)
