"""Attention figures: one head's pattern and scores, the all-heads grid, and the head summary.

Pure functions (no Streamlit). Inputs are recorded tensors with the batch dim already dropped:
patterns (L, H, T, T), scores (T, T) with -inf above the diagonal. The grid is a Vega-Lite chart
with a point selection because clicks on a plotly heatmap never reach Python (streamlit #8760);
`grid_pick` maps the chart's selection back to (layer, head).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd
import plotly.graph_objects as go
import torch

from app.views.events import int_fields, last_selected
from app.views.tokens import attention_bar_figure, attention_html, attention_legend_html, light_figure
from gpt.heads import head_scores_from_pattern, pool_patterns

if TYPE_CHECKING:
    from app.inspection import Inspection

# what the page records: compact recording stores only the scores and derives the pattern
NAMES = ("blocks.*.attn.hook_attn_scores", "blocks.*.attn.hook_pattern")
GRID_PARAM = "head_pick"  # the name of the grid's selection parameter
GRID_MAX_SIDE = 32  # each small heatmap is pooled to at most this many cells a side ...
GRID_MAX_CELLS = 8_000  # ... and the whole grid to about this many marks, so the browser stays quick
GAP = 0.25  # space between small heatmaps, as a fraction of one heatmap's side
NEEDS_TWO = ("Head summary: needs ≥2 tokens. Every score is measured over query positions 1…T-1, and a "
             "one-token prompt has none (its only token can attend only to itself).")


def _heatmap(z: torch.Tensor, labels: Sequence[str], title: str, colorscale: str, zlabel: str,
             **kw: Any) -> go.Figure:
    T = z.size(0)
    trace = dict(type="heatmap", z=z.numpy(), x=list(labels), y=list(labels), colorscale=colorscale, **kw,
                 hovertemplate="query %{y}<br>key %{x}<br>" + zlabel + "=%{z:.4f}<extra></extra>")
    side = min(720, max(320, 14 * T + 120))
    tick = dict(family="monospace", size=10)
    return light_figure([trace], dict(
        title=dict(text=title), height=side, margin=dict(l=10, r=10, t=40, b=40),
        xaxis=dict(type="category", title=dict(text="key"), tickfont=tick, tickangle=-60),
        yaxis=dict(type="category", title=dict(text="query"), autorange="reversed", tickfont=tick)))


def pattern_top(pattern: torch.Tensor) -> float:
    """Where the pattern's colour bar ends: the largest weight outside row 0. Row 0 is always
    [1, 0, ...] (the first query sees only itself), so scaling to it would draw a diffuse head white.
    1.0 for a one-token pattern."""
    z = pattern.detach().float()
    return max(float(z[1:].max()), 1e-6) if z.size(0) > 1 else 1.0


def how_to_read(top: float, T: int) -> str:
    """The Attention page's one-line "how to read this" for a pattern whose colour bar ends at `top`."""
    clip = (f" The pattern's colour bar is clipped at {top:.3f}, the largest weight outside row 0 (row 0 "
            "can only attend to itself: always 1.0)." if T > 1 else "")
    return ("**How to read this:** rows = query (the token looking), columns = key (the token looked "
            "at); each row sums to 1; the upper triangle is masked (a token cannot see later ones: "
            "weight 0, score blank)." + clip)


def pattern_figure(pattern: torch.Tensor, labels: Sequence[str], title: str = "attention pattern") -> go.Figure:
    """Heatmap of one head's pattern (T, T): rows are queries, columns keys, values on hover; the
    colour bar ends at pattern_top(pattern)."""
    _check_square(pattern, labels)
    z = pattern.detach().float().cpu()
    return _heatmap(z, labels, title, "Blues", "p", zmin=0.0, zmax=pattern_top(z))


def scores_figure(scores: torch.Tensor, labels: Sequence[str], title: str = "pre-softmax scores q·k/√d") -> go.Figure:
    """Heatmap of one head's scores (T, T); masked (-inf) cells are left empty, the color range is
    symmetric around 0 so the sign reads at a glance."""
    _check_square(scores, labels)
    s = scores.detach().float().cpu().clone()
    s[~torch.isfinite(s)] = float("nan")  # plotly leaves NaN cells blank
    finite = s[~torch.isnan(s)]
    m = float(finite.abs().max()) if finite.numel() else 1.0
    return _heatmap(s, labels, title, "RdBu_r", "score", zmid=0.0, zmin=-m, zmax=m)  # positive = red


def _check_square(m: torch.Tensor, labels: Sequence[str]) -> None:
    if m.dim() != 2 or m.size(0) != m.size(1) or m.size(0) != len(labels):
        raise ValueError(f"expected a (T, T) matrix with T={len(labels)} labels, got shape {tuple(m.shape)}")


def grid_side(T: int, n_maps: int, max_side: int = GRID_MAX_SIDE, max_cells: int = GRID_MAX_CELLS) -> int:
    """Cells a side of each small heatmap: at most T, max_side, and sqrt(max_cells / n_maps)."""
    side = int((max_cells / max(1, n_maps)) ** 0.5)
    return max(1, min(T, max_side, side))


def grid_frame(patterns: torch.Tensor, side: int | None = None) -> pd.DataFrame:
    """Long table for the grid chart: one row per pooled cell, with its block's placement.

    Columns: layer, head, x0, y0 (a cell's top-left corner; head h sits in column h, layer l in
    row l; every cell is 1/S wide and high),
    value (mean attention), shade (value / that head's max, so every small map uses the full color
    range).
    """
    L, H, T, _ = patterns.shape
    side = side or grid_side(T, L * H)
    pooled = pool_patterns(patterns, side)  # (L, H, S, S)
    S = pooled.size(-1)
    peak = pooled.amax(dim=(-1, -2), keepdim=True).clamp_min(1e-12)  # (L, H, 1, 1)
    shade = pooled / peak
    l, h, i, j = torch.meshgrid(torch.arange(L), torch.arange(H), torch.arange(S), torch.arange(S), indexing="ij")
    block = 1.0 + GAP  # one small heatmap plus its gap, in units of a heatmap side
    x0 = (h * block + j / S).flatten()
    y0 = (l * block + i / S).flatten()
    frame = pd.DataFrame({  # small dtypes: this table is sent to the browser on every rerun
        "layer": l.flatten().numpy().astype("int16"), "head": h.flatten().numpy().astype("int16"),
        "x0": x0.numpy(), "y0": y0.numpy(), "value": pooled.flatten().numpy(), "shade": shade.flatten().numpy(),
    })
    return frame


def grid_spec(n_layer: int, n_head: int, side: int, selected: tuple[int, int] | None = None,
              cell_px: int = 64) -> dict[str, Any]:
    """Vega-Lite spec of the all-heads grid over `grid_frame(patterns, side)`'s table (pass the frame as the chart's
    data: st.vega_lite_chart(frame, spec, on_select=..., key=...)). Layers run down, heads across,
    each block a pooled pattern; a click selects that block's (layer, head) through the point
    selection GRID_PARAM, and `selected` gets an outline.

    A plain dict rather than an Altair chart: Altair's schema validation and conversion took ~300 ms
    for the baby model's ~12k cells, the dict costs nothing (tests validate it against the schema)."""
    block = 1.0 + GAP
    xs = {"domain": [-0.4, n_head * block - GAP + 0.05], "nice": False, "zero": False}
    ys = {"domain": [-0.3, n_layer * block - GAP + 0.05], "nice": False, "zero": False, "reverse": True}

    def pos(x: str, y: str) -> dict[str, Any]:
        return {"x": {"field": x, "type": "quantitative", "scale": xs, "axis": None},
                "y": {"field": y, "type": "quantitative", "scale": ys, "axis": None}}

    cells = {
        "params": [{"name": GRID_PARAM, "select": {"type": "point", "fields": ["layer", "head"],
                                                    "on": "click", "clear": False}}],
        "transform": [{"calculate": "'layer ' + datum.layer + ', head ' + datum.head", "as": "label"},
                      {"calculate": f"datum.x0 + {1.0 / side!r}", "as": "x1"},
                      {"calculate": f"datum.y0 + {1.0 / side!r}", "as": "y1"}],
        "mark": {"type": "rect", "strokeWidth": 0, "cursor": "pointer"},
        "encoding": {**pos("x0", "y0"), "x2": {"field": "x1"}, "y2": {"field": "y1"},
                     "color": {"field": "shade", "type": "quantitative", "legend": None,
                               "scale": {"scheme": "blues", "domain": [0, 1]}},
                     "opacity": {"condition": {"param": GRID_PARAM, "value": 1.0, "empty": True}, "value": 0.45},
                     "tooltip": [{"field": "label", "type": "nominal", "title": "open"},
                                 {"field": "value", "type": "quantitative", "format": ".3f",
                                  "title": "mean weight"}]},
    }
    heads = [{"x": h * block + 0.5, "y": -0.05, "text": f"H{h}"} for h in range(n_head)]
    layers = [{"x": -0.08, "y": l * block + 0.5, "text": f"L{l}"} for l in range(n_layer)]
    text_enc = {**pos("x", "y"), "text": {"field": "text", "type": "nominal"}}
    parts: list[dict[str, Any]] = [
        cells,
        {"data": {"values": heads}, "mark": {"type": "text", "baseline": "bottom", "fontSize": 12},
         "encoding": text_enc},
        {"data": {"values": layers}, "mark": {"type": "text", "align": "right", "fontSize": 12},
         "encoding": text_enc},
    ]
    if selected is not None:
        sl, sh = selected
        box = [{"x0": sh * block - 0.05, "x1": sh * block + 1.05, "y0": sl * block - 0.05, "y1": sl * block + 1.05}]
        parts.append({"data": {"values": box},
                      "mark": {"type": "rect", "fillOpacity": 0, "stroke": "#e4572e", "strokeWidth": 3},
                      "encoding": {**pos("x0", "y0"), "x2": {"field": "x1"}, "y2": {"field": "y1"}}})
    return {"width": round(cell_px * (n_head * block + 0.3)), "height": round(cell_px * (n_layer * block + 0.3)),
            "layer": parts, "config": {"view": {"strokeWidth": 0}}}


def grid_pick(event: Any, n_layer: int, n_head: int) -> tuple[int, int] | None:
    """(layer, head) the user clicked in the grid, from what st.vega_lite_chart(on_select=...)
    returns (or st.session_state[key]): {"selection": {GRID_PARAM: [{"layer": l, "head": h}]}}.
    Accepts the event itself, its .selection, or the point list. None when nothing (valid) is
    selected: no click yet, a cleared selection, or indices outside this model (a stale click
    from another model)."""
    got = int_fields(last_selected(event, GRID_PARAM), "layer", "head")
    if got is None:
        return None
    layer, head = got
    if not (0 <= layer < n_layer and 0 <= head < n_head):
        return None
    return layer, head


def head_summary_figure(entropy: torch.Tensor, prev_token: torch.Tensor, first_token: torch.Tensor,
                        selected: tuple[int, int] | None = None, max_entropy: float | None = None) -> go.Figure:
    """Three (L, H) heatmaps side by side: attention entropy (bits), mean weight on the previous
    token, mean weight on the first token (an attention sink); `selected` outlined in each.
    Color ranges are fixed (0..max_entropy bits, 0..1 weight) so equal numbers look equal across
    models and prompts, instead of stretching tiny differences over the whole scale.
    Axes are laid out by hand: make_subplots alone cost ~15 ms per rerun."""
    top = max_entropy if max_entropy is not None else max(1.0, float(entropy.max()))
    mats = (("entropy (bits)", entropy, "Viridis", top), ("previous-token", prev_token, "Blues", 1.0),
            ("first-token mass", first_token, "Oranges", 1.0))
    L, H = entropy.shape
    xs, ys = [f"H{h}" for h in range(H)], [f"L{l}" for l in range(L)]
    width, gap = 0.3, 0.05
    traces, layout, shapes, notes = [], {}, [], []
    for c, (name, m, scale, zmax) in enumerate(mats):
        ax = "" if c == 0 else str(c + 1)
        x0 = c * (width + gap)
        traces.append(dict(type="heatmap", z=m.detach().float().cpu().numpy(), x=xs, y=ys, colorscale=scale,
                           zmin=0.0, zmax=zmax,
                           texttemplate="%{z:.2f}", showscale=False, xaxis=f"x{ax}", yaxis=f"y{ax}",
                           hovertemplate="%{y} %{x}<br>" + name + "=%{z:.3f}<extra></extra>"))
        layout[f"xaxis{ax}"] = dict(domain=[x0, x0 + width], anchor=f"y{ax}")
        layout[f"yaxis{ax}"] = dict(autorange="reversed", anchor=f"x{ax}")
        notes.append(dict(text=name, x=x0 + width / 2, y=1.0, xref="paper", yref="paper", showarrow=False,
                          yanchor="bottom", font=dict(size=13)))
        if selected is not None:
            shapes.append(dict(type="rect", xref=f"x{ax}", yref=f"y{ax}", x0=selected[1] - 0.5,
                               x1=selected[1] + 0.5, y0=selected[0] - 0.5, y1=selected[0] + 0.5,
                               line=dict(color="#e4572e", width=3)))
    return light_figure(traces, dict(height=max(220, 34 * L + 90), margin=dict(l=10, r=10, t=40, b=10),
                                     annotations=notes, shapes=shapes, **layout))


def uniform_entropy(T: int) -> float:
    """The entropy (bits) of a head that attends uniformly, averaged over query positions 1..T-1:
    the most any head can have on a T-token prompt (position t spreads over t+1 keys)."""
    return sum(math.log2(t + 1) for t in range(1, T)) / max(1, T - 1)


def induction_figure(induction: torch.Tensor, selected: tuple[int, int] | None = None) -> go.Figure:
    """Heatmap of induction scores (L, H) (gpt.heads.head_scores(...).induction) on a fixed 0..1
    scale: a mean attention weight, so noise (≤0.01) stays pale instead of filling the scale."""
    L, H = induction.shape
    trace = dict(type="heatmap", z=induction.detach().float().cpu().numpy(), x=[f"H{h}" for h in range(H)],
                 y=[f"L{l}" for l in range(L)], colorscale="Purples", zmin=0.0, zmax=1.0, texttemplate="%{z:.2f}",
                 hovertemplate="%{y} %{x}<br>induction=%{z:.3f}<extra></extra>")
    shapes = [] if selected is None else [dict(
        type="rect", x0=selected[1] - 0.5, x1=selected[1] + 0.5, y0=selected[0] - 0.5, y1=selected[0] + 0.5,
        line=dict(color="#e4572e", width=3))]
    return light_figure([trace], dict(
        height=max(200, 34 * L + 80), margin=dict(l=10, r=10, t=30, b=10), shapes=shapes,
        title=dict(text="induction: weight on the token after the previous occurrence"),
        yaxis=dict(autorange="reversed")))


@dataclass
class AttentionView:
    """Everything the Attention page draws for one (prompt, layer, head, query)."""

    pattern: go.Figure
    scores: go.Figure
    how_to_read: str  # the one-line caption under the two heatmaps
    query_html: str
    query_legend: str  # the strip's colour legend (HTML)
    query_bar: go.Figure
    grid_frame: pd.DataFrame
    grid_spec: dict[str, Any]
    grid_side: int
    summary: dict[str, torch.Tensor]  # (L, H) each; {} for a one-token prompt (nothing measured)
    summary_fig: go.Figure | None  # None for a one-token prompt
    selected_scores: dict[str, float]  # the open head's entry of each summary ({} when none)
    summary_note: str | None = None  # NEEDS_TWO for a one-token prompt


def build(insp: "Inspection", query: int) -> AttentionView:
    """All of the page's figures for the Inspection's layer and head and the chosen `query`, from
    its recording of NAMES (batch 1). One function, so the page and bench/bench_pages.py time
    exactly the same work."""
    rec, strs, labels, T = insp.rec, insp.strs, insp.labels, insp.T
    n_layer, n_head, layer, head = insp.config.n_layer, insp.config.n_head, insp.layer, insp.head
    side = grid_side(T, n_layer * n_head)
    # one layer at a time: all of GPT-2's patterns at T=1024 would be 600 MB in float32
    pooled, per, opened = [], [], torch.empty(0)
    for i in range(n_layer):
        p = rec[f"blocks.{i}.attn.hook_pattern"][0].float()  # (H, T, T), derived from the scores
        pooled.append(pool_patterns(p.unsqueeze(0), side)[0])  # (H, S, S)
        per.append(head_scores_from_pattern(p))  # {score: (H,)}
        if i == layer:
            opened = p[head].clone()  # (T, T); a clone, so this layer's (H, T, T) can be freed
    # one token: the scores over queries 1..T-1 would be placeholders (0, 1), not measurements
    summary = {k: torch.stack([d[k] for d in per]) for k in ("entropy", "prev_token", "first_token")} if T > 1 else {}
    row = opened[query]  # (T,) where the chosen query attends
    return AttentionView(
        pattern=pattern_figure(opened, labels, title="pattern (softmax)"),
        scores=scores_figure(rec[f"blocks.{layer}.attn.hook_attn_scores"][0, head], labels),
        how_to_read=how_to_read(pattern_top(opened), T),
        query_html=attention_html(strs, row, query),
        query_legend=attention_legend_html(row, query),
        query_bar=attention_bar_figure(labels, row, query),
        grid_frame=grid_frame(torch.stack(pooled), side),  # (L, H, S, S), already pooled
        grid_spec=grid_spec(n_layer, n_head, side, selected=(layer, head),
                            cell_px=max(40, min(72, 600 // max(n_layer, n_head)))),
        grid_side=side,
        summary=summary,
        summary_fig=head_summary_figure(summary["entropy"], summary["prev_token"], summary["first_token"],
                                        selected=(layer, head), max_entropy=uniform_entropy(T)) if summary else None,
        selected_scores={k: float(v[layer, head]) for k, v in summary.items()},
        summary_note=None if summary else NEEDS_TWO,
    )
