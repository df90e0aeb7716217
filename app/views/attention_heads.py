"""Attention interaction in the manner of BertViz and CircuitsVis: a clickable token strip, several
heads overlaid (each in its own colour) for one query's row and for one token's key column, and a
head view that draws lines between tokens.

Pure functions (no Streamlit). Clicks: st.plotly_chart delivers selections from scatter markers
(not from heatmaps), so every clickable element here is a scatter of square markers whose
customdata holds the token position; `token_pick` reads it back.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from plotly.colors import get_colorscale

from app.views.events import last_selected
from app.views.tokens import light_figure

# one colour per head, in order of choice (Tableau 10: distinct, and readable on white)
HEAD_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d",
                "#ff9da6", "#bab0ac")
# Plotly's modebar buttons are <button>s, so Tab stops on every one of them, and displayModeBar
# "hover" only fades them (opacity 0). An element with visibility: hidden is not focusable, so hiding
# the modebar until the mouse is over its chart takes the buttons out of the tab order while a mouse
# user still gets them, Download plot as PNG included. CSS only: no script runs.
MODEBAR_CSS = ("<style>[data-testid='stPlotlyChart'] .modebar-container{visibility:hidden}"
               "[data-testid='stPlotlyChart'] .js-plotly-plot:hover .modebar-container{visibility:visible}</style>")
HEAD_VIEW_MAX_T = 64  # the head view draws lines for prompts up to this many tokens
LINE_MIN = 0.02  # lines lighter than this weight are left out (they would be invisible anyway)
BUCKETS = 5  # line opacities are drawn in this many steps (one trace per head and step)
STRIP_WIDTH = 32  # tokens per row of the clickable strip
# Plotly config for every figure here: the modebar shows on hover only and keeps "Download plot as
# PNG"; MODEBAR_CSS takes its buttons out of the tab order
CONFIG = {"displayModeBar": "hover", "displaylogo": False,
          "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}


def colour(i: int) -> str:
    """The colour of the i-th chosen head."""
    return HEAD_COLOURS[i % len(HEAD_COLOURS)]


def token_strip(strs: Sequence[str], weights: torch.Tensor, query: int, start: int = 0,
                width: int = STRIP_WIDTH) -> Any:
    """Tokens strs (positions start .. start+len-1) as clickable squares, `width` a row, shaded by
    `weights` (the query's attention on each, same length; 0 where masked), the query outlined.
    Hover shows the weight; a click selects that token (token_pick)."""
    w = weights.detach().float().cpu()
    if w.numel() != len(strs):
        raise ValueError(f"{len(strs)} tokens but {w.numel()} weights")
    top = max(float(w.max()) if w.numel() else 0.0, 1e-6)
    xs = [i % width for i in range(len(strs))]
    ys = [i // width for i in range(len(strs))]
    pos = [start + i for i in range(len(strs))]
    lines = [2.5 if p == query else 0.5 for p in pos]
    trace = dict(type="scatter", mode="markers+text", x=xs, y=ys, text=[s[:4] for s in strs],
                 textfont=dict(family="monospace", size=10,  # white on the darker half
                               color=["#ffffff" if float(v) > 0.55 * top else "#222222" for v in w]),
                 customdata=[[p, float(v)] for p, v in zip(pos, w)],
                 # plotly.js draws its own "Blues" reversed: hand over plotly's (Python) scale
                 marker=dict(symbol="square", size=26, color=w.numpy(), colorscale=get_colorscale("Blues"),
                             cmin=0.0, cmax=top,
                             line=dict(color=["#e4572e" if p == query else "#bbbbbb" for p in pos], width=lines)),
                 unselected=dict(marker=dict(opacity=1)),
                 hovertemplate="%{customdata[0]}: %{text}<br>attention=%{customdata[1]:.4f}<extra></extra>")
    rows = max(1, (len(strs) + width - 1) // width)
    return light_figure([trace], dict(
        height=34 * rows + 30, margin=dict(l=5, r=5, t=5, b=5), showlegend=False, dragmode=False,
        xaxis=dict(visible=False, range=[-0.7, width - 0.3]),
        yaxis=dict(visible=False, autorange="reversed", range=[rows - 0.4, -0.6])))


def token_pick(event: Any, T: int) -> int | None:
    """The token position clicked in a strip or a head view (st.plotly_chart's selection event),
    None when nothing (valid) is selected."""
    item = last_selected(event, "points")
    data = item.get("customdata") if isinstance(item, dict) else None
    if isinstance(data, (list, tuple)) and data:
        data = data[0]
    try:
        p = int(data)
    except (TypeError, ValueError):
        return None
    return p if 0 <= p < T else None


def overlay_figure(lines: dict[str, torch.Tensor], labels: Sequence[str], title: str, axis: str,
                   mark: int | None = None) -> Any:
    """Several heads' weights over the same positions, one line each in its own colour (the order of
    `lines`: {head name: (n,) weights}); `axis` names the positions ("key" or "query"); `mark` a
    position to draw a vertical rule at."""
    data = []
    for i, (name, w) in enumerate(lines.items()):
        data.append(dict(type="scatter", mode="lines", name=name, x=list(range(len(w))),
                         y=w.detach().float().cpu().numpy(), line=dict(color=colour(i), width=1.5),
                         customdata=list(labels[: len(w)]),
                         hovertemplate=name + "<br>" + axis + " %{customdata}<br>weight=%{y:.4f}<extra></extra>"))
    shapes = [] if mark is None else [dict(type="line", x0=mark, x1=mark, y0=0, y1=1, yref="paper",
                                           line=dict(color="#e4572e", width=1, dash="dot"))]
    return light_figure(data, dict(
        title=dict(text=title), height=260, margin=dict(l=10, r=10, t=40, b=30), shapes=shapes,
        xaxis=dict(title=dict(text=f"{axis} position")), yaxis=dict(title=dict(text="weight"), rangemode="tozero"),
        legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom")))


def head_rows(pattern: torch.Tensor, heads: Sequence[int], query: int) -> dict[str, torch.Tensor]:
    """{"H<h>": (query+1,) weights}: where `query` attends, for each head of pattern (H, T, T)."""
    return {f"H{h}": pattern[h, query, : query + 1] for h in heads}


def head_columns(pattern: torch.Tensor, heads: Sequence[int], key: int) -> dict[str, torch.Tensor]:
    """{"H<h>": (T,) weights}: what attends to token `key` (its column), for each head; queries before
    `key` cannot see it and hold 0."""
    return {f"H{h}": pattern[h, :, key] for h in heads}


def head_view(pattern: torch.Tensor, heads: Sequence[int], strs: Sequence[str], query: int | None = None,
              min_weight: float = LINE_MIN) -> Any:
    """BertViz's head view: the tokens in a left column (queries) and a right column (keys), a line
    from query i to key j for each chosen head with opacity = weight (in BUCKETS steps; weights
    below `min_weight` left out), one colour per head. With `query`, only its lines are drawn.
    Clicking a token in either column selects it (token_pick). Raises ValueError past
    HEAD_VIEW_MAX_T tokens (too many lines to read)."""
    T = pattern.size(-1)
    if T > HEAD_VIEW_MAX_T:
        raise ValueError(f"the head view draws at most {HEAD_VIEW_MAX_T} tokens, got {T}")
    data: list[dict[str, Any]] = []
    for c, h in enumerate(heads):
        p = pattern[h].detach().float().cpu()  # (T, T)
        for b in range(BUCKETS):
            lo, hi = b / BUCKETS, (b + 1) / BUCKETS
            xs: list[float | None] = []
            ys: list[float | None] = []
            for i in range(T) if query is None else [query]:
                for j in range(i + 1):
                    w = float(p[i, j])
                    if w >= min_weight and lo <= w < hi or (b == BUCKETS - 1 and w >= hi):
                        xs += [0.0, 1.0, None]
                        ys += [i, j, None]
            if xs:
                data.append(dict(type="scatter", mode="lines", x=xs, y=ys, hoverinfo="skip", showlegend=b == 0,
                                 name=f"H{h}", legendgroup=f"H{h}",
                                 line=dict(color=colour(c), width=2), opacity=max(0.12, hi)))
    for x, anchor in ((0.0, "left"), (1.0, "right")):
        data.append(dict(type="scatter", mode="markers+text", x=[x] * T, y=list(range(T)), showlegend=False,
                         text=list(strs), textposition=f"middle {anchor}", customdata=list(range(T)),
                         textfont=dict(family="monospace", size=11), unselected=dict(marker=dict(opacity=1)),
                         marker=dict(symbol="square", size=9, color=["#e4572e" if i == query else "#999999"
                                                                    for i in range(T)]),
                         hovertemplate="%{customdata}: %{text}<extra>click: make it the query</extra>"))
    return light_figure(data, dict(
        height=max(260, 18 * T + 60), margin=dict(l=10, r=10, t=30, b=10), dragmode=False,
        xaxis=dict(visible=False, range=[-0.6, 1.6]), yaxis=dict(visible=False, autorange="reversed"),
        legend=dict(orientation="h", y=1.0, x=0.5, xanchor="center", yanchor="bottom"),
        annotations=[dict(text="query", x=0.0, y=-1.2, showarrow=False), dict(text="key", x=1.0, y=-1.2,
                                                                               showarrow=False)]))
