"""Attention at long context: a pooled overview as a PNG, a zoomed window at full resolution, and
the all-heads grid as one composite PNG under a clickable Vega-Lite overlay.

Pure functions (no Streamlit). Why images: a 1024 x 1024 heatmap as Plotly JSON is 10-20 MB, a
Vega-Lite table of 144 heads' cells is as bad, while a block-max pooled 256 x 256 map quantized to
uint8 and PNG-encoded is tens of KB (bench/bench_long_context.py measures it). The zoom window
(at most ZOOM x ZOOM cells) is a real heatmap with values on hover.
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from app.views.tokens import light_figure
from gpt.attention_trace import LayerDigest, block_max

OVERVIEW_SIDE = 256  # the overview is block-max pooled to at most this many cells a side
OVERVIEW_PX = 512  # ... and drawn this many pixels a side (nearest-neighbour, so cells stay sharp)
ZOOM = 128  # the zoom window: at most this many queries x keys at full resolution
GRID_GAP = 8  # pixels between thumbnails in the all-heads grid
GRID_PAD = (34, 22)  # (left, top) pixels for the layer and head labels around the composite
GRID_MAX_WIDTH = 660  # pixels: the grid fits the page's main column at its default width
GRID_PARAM = "head_pick"  # the grid's selection parameter (as app.views.attention)
_BLUES = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b")


def lut(colors: Sequence[str] = _BLUES) -> np.ndarray:
    """A 256-entry RGB colour table (256, 3) uint8, linear between the given hex colours."""
    rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in colors], dtype=np.float64)  # (n, 3)
    at = np.linspace(0.0, 1.0, len(colors))
    x = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(x, at, rgb[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def quantize(values: torch.Tensor, top: float, floor: float | None = None) -> np.ndarray:
    """uint8 levels 0..255 (same shape) of values on a linear scale 0..top, or with `floor` on a log
    scale from floor (level 0) to top (255): at long context a diffuse head's weights are ~1/T, which
    a linear scale draws white; the log scale shows them and a sharp head's peaks alike."""
    v = values.detach().float().cpu()
    top = max(float(top), 1e-12)
    if floor is None:
        x = v / top
    else:
        lo = math.log(min(float(floor), top / 2))
        x = (v.clamp_min(1e-30).log() - lo) / (math.log(top) - lo)
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


def log_floor(T: int) -> float:
    """The overview's and the grid's log-scale floor: a quarter of a uniform weight over T keys."""
    return 1.0 / (4.0 * max(1, T))


def png(levels: np.ndarray, scale: int = 1, box: tuple[int, int, int, int] | None = None) -> bytes:
    """uint8 levels (h, w) -> PNG bytes on the Blues table, each cell `scale` pixels a side;
    `box` (x0, y0, x1, y1) in cells, outlined in orange (the zoom window)."""
    img = Image.fromarray(lut()[levels], mode="RGB")  # (h, w, 3)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if box is not None:
        x0, y0, x1, y1 = (int(round(c * scale)) for c in box)
        ImageDraw.Draw(img).rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(228, 87, 46), width=2)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


def zoom_window(T: int, query: int, q0: int | None = None, k0: int | None = None, size: int = ZOOM
                ) -> tuple[int, int, int, int]:
    """The zoom window (q0, q1, k0, k1), half-open, at most `size` a side and inside 0..T: the given
    first query and key (clamped), or by default the diagonal block that ends at the query (the
    keys the query can see, up to `size` of them)."""
    n = min(size, T)
    if q0 is None:
        q0 = query - n + 1
    q0 = max(0, min(int(q0), T - n))
    k0 = q0 if k0 is None else max(0, min(int(k0), T - n))
    return q0, q0 + n, k0, k0 + n


@dataclass(frozen=True)
class Overview:
    """The open head's whole pattern as a PNG: `png` bytes, `side` pooled cells a side, `cell`
    tokens per cell (about T / side)."""

    png: bytes
    side: int
    cell: float


def overview(pattern: torch.Tensor, top: float, window: tuple[int, int, int, int] | None = None,
             side: int = OVERVIEW_SIDE, px: int = OVERVIEW_PX) -> Overview:
    """One head's pattern (T, T), block-max pooled to at most `side` cells a side, on a log scale from
    log_floor(T) to `top` (its largest weight outside row 0), the zoom `window` (q0, q1, k0, k1)
    outlined."""
    T = pattern.size(-1)
    pooled = block_max(pattern, side)  # (S, S)
    S = pooled.size(-1)
    cell = T / S
    box = None if window is None else (window[2] / cell, window[0] / cell, window[3] / cell, window[1] / cell)
    return Overview(png(quantize(pooled, top, log_floor(T)), scale=max(1, px // S), box=box), S, cell)


def crop_top(pattern: torch.Tensor, window: tuple[int, int, int, int]) -> float:
    """Where the zoomed pattern's colour bar ends: the largest weight in the window outside row 0 (row
    0 is always [1, 0, ...]); far down a long prompt weights are ~1/T, and the whole pattern's top
    would draw them white. 1.0 when the window holds only row 0."""
    q0, q1, k0, k1 = window
    z = pattern[max(q0, 1):q1, k0:k1]  # (rows, cols) without row 0
    return max(float(z.max()), 1e-6) if z.numel() else 1.0


def crop_figure(m: torch.Tensor, labels: Sequence[str], window: tuple[int, int, int, int], title: str,
                kind: str = "pattern", top: float | None = None) -> Any:
    """Heatmap of m[q0:q1, k0:k1] at full resolution, values on hover. kind "pattern": Blues from 0
    to `top`; kind "scores": RdBu around 0, masked (-inf) cells blank. Rows are queries, columns keys,
    labelled with the prompt's unique labels."""
    q0, q1, k0, k1 = window
    z = m[q0:q1, k0:k1].detach().float().cpu().clone()  # (q1-q0, k1-k0)
    if kind == "scores":
        z[~torch.isfinite(z)] = float("nan")  # plotly leaves NaN cells blank
        fin = z[~torch.isnan(z)]
        lim = float(fin.abs().max()) if fin.numel() else 1.0
        colour = dict(colorscale="RdBu_r", zmid=0.0, zmin=-lim, zmax=lim)
        zlabel = "score"
    elif kind == "pattern":
        colour = dict(colorscale="Blues", zmin=0.0, zmax=float(top) if top is not None else float(z.max()))
        zlabel = "p"
    else:
        raise ValueError(f"kind must be 'pattern' or 'scores', got {kind!r}")
    n = max(q1 - q0, k1 - k0)
    trace = dict(type="heatmap", z=z.numpy(), x=list(labels[k0:k1]), y=list(labels[q0:q1]), **colour,
                 hovertemplate="query %{y}<br>key %{x}<br>" + zlabel + "=%{z:.4f}<extra></extra>")
    tick = dict(family="monospace", size=10)
    side = min(720, max(320, 14 * n + 120))
    return light_figure([trace], dict(
        title=dict(text=title), height=side, margin=dict(l=10, r=10, t=40, b=40),
        xaxis=dict(type="category", title=dict(text="key"), tickfont=tick, tickangle=-60),
        yaxis=dict(type="category", title=dict(text="query"), autorange="reversed", tickfont=tick)))


# -- the all-heads grid ------------------------------------------------------------------------------
def grid_levels(digests: Sequence[LayerDigest], T: int) -> np.ndarray:
    """Every head's thumbnail as uint8 levels (L, H, S, S), each on the overview's log scale from
    log_floor(T) to its own top."""
    return np.stack([np.stack([quantize(d.thumbs[h], float(d.tops[h]), log_floor(T))
                               for h in range(d.thumbs.size(0))])
                     for d in digests])


def grid_png(levels: np.ndarray, gap: int = GRID_GAP, max_width: int = GRID_MAX_WIDTH) -> tuple[bytes, int]:
    """The thumbnails (L, H, S, S) in one PNG: layers down, heads across, `gap` white pixels between,
    each head drawn in px x px pixels (at most 48, and small enough that the grid with its labels
    fits `max_width`, so the browser never rescales it away from its click overlay).
    Returns (png bytes, px)."""
    L, H, S, _ = levels.shape
    px = max(8, min(48, (max_width - GRID_PAD[0] + gap) // H - gap))
    canvas = np.zeros((L * (px + gap) - gap, H * (px + gap) - gap), dtype=np.uint8)
    mask = np.zeros(canvas.shape, dtype=bool)
    for l in range(L):
        for h in range(H):
            y, x = l * (px + gap), h * (px + gap)
            if px % S == 0:  # whole cells: each level repeated, exactly
                tile = np.kron(levels[l, h], np.ones((px // S, px // S), dtype=np.uint8))
            else:
                tile = np.asarray(Image.fromarray(levels[l, h]).resize((px, px), Image.NEAREST))
            canvas[y:y + px, x:x + px] = tile
            mask[y:y + px, x:x + px] = True
    white = np.full(canvas.shape + (3,), 255, dtype=np.uint8)  # (h, w, 3)
    rgb = np.where(mask[..., None], lut()[canvas], white)
    out = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(out, format="PNG", compress_level=6)
    return out.getvalue(), px


def grid_image_spec(png_bytes: bytes, n_layer: int, n_head: int, px: int, gap: int = GRID_GAP,
                    selected: tuple[int, int] | None = None, summary: dict[str, torch.Tensor] | None = None
                    ) -> dict[str, Any]:
    """Vega-Lite spec drawing the composite PNG with one transparent rectangle per head on top: a
    click selects that head's (layer, head) through the point selection GRID_PARAM (decode it with
    app.views.attention.grid_pick); the tooltip names the head and its scores; `selected` is
    outlined. Coordinates are pixels of the composite, offset by GRID_PAD for the labels."""
    left, top = GRID_PAD
    w, h = n_head * (px + gap) - gap, n_layer * (px + gap) - gap
    url = "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")
    # explicit pixel ranges: data units are the PNG's pixels (y down), so the overlay and the labels
    # land on the image whatever height the chart is given
    xs = {"domain": [0, left + w], "range": [0, left + w], "nice": False, "zero": False}
    ys = {"domain": [0, top + h], "range": [0, top + h], "nice": False, "zero": False}

    def enc(x: str, y: str) -> dict[str, Any]:
        return {"x": {"field": x, "type": "quantitative", "scale": xs, "axis": None},
                "y": {"field": y, "type": "quantitative", "scale": ys, "axis": None}}

    heads = []
    for l in range(n_layer):
        for hh in range(n_head):
            x0, y0 = left + hh * (px + gap), top + l * (px + gap)
            row = {"layer": l, "head": hh, "label": f"layer {l}, head {hh}", "x0": x0, "y0": y0,
                   "x1": x0 + px, "y1": y0 + px}
            for k, v in (summary or {}).items():
                row[k] = round(float(v[l, hh]), 3)
            heads.append(row)
    tips = [{"field": "label", "type": "nominal", "title": "open"}] + [
        {"field": k, "type": "quantitative", "format": ".2f"} for k in (summary or {})]
    parts: list[dict[str, Any]] = [
        {"data": {"values": [{"x": left, "y": top, "url": url}]},
         "mark": {"type": "image", "width": w, "height": h, "align": "left", "baseline": "top", "aspect": False},
         "encoding": {**enc("x", "y"), "url": {"field": "url", "type": "nominal"}}},
        {"data": {"values": heads},
         "params": [{"name": GRID_PARAM, "select": {"type": "point", "fields": ["layer", "head"],
                                                     "on": "click", "clear": False}}],
         "mark": {"type": "rect", "fill": "#000000", "cursor": "pointer", "strokeWidth": 0},
         "encoding": {**enc("x0", "y0"), "x2": {"field": "x1"}, "y2": {"field": "y1"},
                      "fillOpacity": {"value": 0.001}, "tooltip": tips}},
        {"data": {"values": [{"x": left + hh * (px + gap) + px / 2, "y": top - 4, "t": f"H{hh}"}
                             for hh in range(n_head)]},
         "mark": {"type": "text", "baseline": "bottom", "fontSize": 11},
         "encoding": {**enc("x", "y"), "text": {"field": "t"}}},
        {"data": {"values": [{"x": left - 5, "y": top + l * (px + gap) + px / 2, "t": f"L{l}"}
                             for l in range(n_layer)]},
         "mark": {"type": "text", "align": "right", "baseline": "middle", "fontSize": 11},
         "encoding": {**enc("x", "y"), "text": {"field": "t"}}},
    ]
    if selected is not None:
        sl, sh = selected
        x0, y0 = left + sh * (px + gap) - 3, top + sl * (px + gap) - 3
        parts.append({"data": {"values": [{"x0": x0, "y0": y0, "x1": x0 + px + 6, "y1": y0 + px + 6}]},
                      "mark": {"type": "rect", "fillOpacity": 0, "stroke": "#e4572e", "strokeWidth": 3},
                      "encoding": {**enc("x0", "y0"), "x2": {"field": "x1"}, "y2": {"field": "y1"}}})
    return {"width": left + w, "height": top + h, "layer": parts, "config": {"view": {"strokeWidth": 0}}}
