"""The Walkthrough's pipeline diagram: the whole GPT as clickable boxes drawn from the model's
config, each labelled with its tensor shape for the prompt, the inside of the chosen block below,
and the click handler that maps a box back to a stage (and layer).

Pure (no Streamlit): a GPTConfig in, a plotly figure out (go.Scatter square markers, since clicks on
shapes do not reach Python). Stage definitions and shapes come from app.views.walkthrough_stages.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import plotly.graph_objects as go

from app.views.events import last_selected
from app.views.walkthrough_stages import STAGES, stage_shapes
from gpt.config import GPTConfig

KIND_COLORS = {"embed": "#9ecae1", "norm": "#fdd49e", "attn": "#fc9272", "mlp": "#a1d99b", "add": "#e3e3e3",
               "out": "#cdb8e6", "block": "#c6dbef"}
SELECTED = "#e4572e"
BOX_PX = 46  # marker side in pixels
DIAGRAM_PX = 800  # about the diagram's plot width in a 1280-px window (wide layout, sidebar open)
LABEL_CHAR_PX, LABEL_LINE_PX = 6.2, 13  # a 10-px monospace shape label: one character's width, one line
Y_TOP, Y_STREAM, Y_BRANCH = 2.7, 1.0, 0.0  # rows: the whole model; inside one block (stream, branch)


@dataclass(frozen=True)
class Node:
    """A clickable box: `key` is a stage key or "block:<i>" (customdata of the point)."""

    key: str
    label: str
    x: float
    y: float
    shape: str
    kind: str


def diagram_nodes(config: GPTConfig, T: int, layer: int) -> list[Node]:
    """Boxes of the diagram: the whole model on top (ids … n_layer blocks … lm_head), the inside of
    block `layer` below; each carries its tensor shape for a prompt of T tokens."""
    L = config.n_layer
    shapes = stage_shapes(config, T)
    bx = min(1.0, 6.0 / L)  # block spacing: many layers squeeze together (smaller boxes, see diagram_figure)
    top = [Node("ids", "ids", 0, Y_TOP + 0.4, shapes["ids"], "embed"),
           Node("tok_emb", "wte", 1, Y_TOP + 0.4, shapes["tok_emb"], "embed"),
           Node("pos_emb", "wpe", 1, Y_TOP - 0.4, shapes["pos_emb"], "embed"),
           Node("embed", "+", 2, Y_TOP, shapes["embed"], "add")]
    top += [Node(f"block:{i}", f"block {i}" if L <= 6 else str(i), 3 + i * bx, Y_TOP,
                 shapes["embed"] if L <= 6 else "", "block") for i in range(L)]
    end = 3 + (L - 1) * bx
    top += [Node("ln_f", "ln_f", end + 1, Y_TOP, shapes["ln_f"], "norm"),
            Node("logits", "lm_head", end + 2, Y_TOP, shapes["logits"], "out")]
    x0, x1 = 0.3, end + 2.3  # the inside of a block spans the same width
    slot = [x0 + j * (x1 - x0) / 7 for j in range(8)]
    inner = [("ln1", 1, Y_BRANCH), ("attn", 2, Y_BRANCH), ("resid_mid", 3, Y_STREAM),
             ("ln2", 4, Y_BRANCH), ("mlp", 5, Y_BRANCH), ("resid_post", 6, Y_STREAM)]
    return top + [Node(k, STAGES[k].short, slot[j], y, shapes[k], STAGES[k].kind) for k, j, y in inner]


def _stream_ends(by: Mapping[str, Node]) -> tuple[float, float]:
    """Where the residual stream inside the drawn block starts and ends (x in, x out)."""
    step = by["attn"].x - by["ln1"].x
    return by["ln1"].x - 0.9 * step, by["resid_post"].x + 0.9 * step


def x_range(nodes: Sequence[Node]) -> tuple[float, float]:
    """The diagram's x-axis range: every box, the stream's ends and a margin."""
    by = {n.key: n for n in nodes}
    xs0, xs1 = _stream_ends(by)
    return min(xs0 - 0.3, -0.5), max(by["logits"].x, xs1) + 0.6


def label_drops(nodes: Sequence[Node], width_px: float = DIAGRAM_PX) -> dict[str, int]:
    """How many pixels each box's shape label moves down so that no two labels of one row overlap
    in a plot `width_px` wide (many layers squeeze the top row: ln_f's and lm_head's labels would
    run into each other). Left to right, a label drops a line at a time until it is clear."""
    lo, hi = x_range(nodes)
    per = width_px / (hi - lo)
    placed: list[tuple[float, float, float, float, float]] = []  # (row y, x0, x1, top, bottom) in px
    drops: dict[str, int] = {}
    for n in sorted((n for n in nodes if n.shape), key=lambda n: n.x):
        lines = n.shape.split("<br>")
        half = max(map(len, lines)) * LABEL_CHAR_PX / 2 + 2
        x0, x1, h, top = (n.x - lo) * per - half, (n.x - lo) * per + half, len(lines) * LABEL_LINE_PX, 0
        while any(y == n.y and a < x1 and x0 < b and c < top + h and top < d for y, a, b, c, d in placed):
            top += LABEL_LINE_PX
        placed.append((n.y, x0, x1, top, top + h))
        drops[n.key] = top
    return drops


def _arrow(x: float, y: float, ax: float, ay: float, standoff: int = BOX_PX // 2 + 2,
           start: int = BOX_PX // 2 + 2) -> dict[str, Any]:
    return dict(x=x, y=y, ax=ax, ay=ay, xref="x", yref="y", axref="x", ayref="y", text="", showarrow=True,
                arrowhead=2, arrowsize=1.2, arrowwidth=1.5, arrowcolor="#666", standoff=standoff,
                startstandoff=start)


def diagram_figure(config: GPTConfig, T: int, stage: str, layer: int) -> go.Figure:
    """The pipeline as clickable boxes (go.Scatter square markers, customdata = Node.key; use with
    st.plotly_chart(on_select=..., selection_mode="points") and `pick`). The selected stage (and
    its block) is outlined; every box is labelled with its shape for this prompt."""
    nodes = diagram_nodes(config, T, layer)
    by = {n.key: n for n in nodes}
    L = config.n_layer
    chosen = {stage, f"block:{layer}"} if STAGES[stage].in_block else {stage}
    line_c = [SELECTED if n.key in chosen else "#666" for n in nodes]
    line_w = [4 if n.key in chosen else 1 for n in nodes]
    size = [BOX_PX if not n.key.startswith("block:") or L <= 6 else max(8, BOX_PX * 6 // L)
            for n in nodes]
    x_shape = stage_shapes(config, T)["embed"]  # what flows between blocks: (1, T, C)
    hover = [(f"block {n.key[6:]}: LN 1 → attn → + → LN 2 → MLP → +<br>{x_shape}" if n.key.startswith("block:")
              else f"{STAGES[n.key].label}<br>{n.shape}") + "<br>click to show its values" for n in nodes]
    points = go.Scatter(
        x=[n.x for n in nodes], y=[n.y for n in nodes], mode="markers+text", text=[n.label for n in nodes],
        textfont=dict(size=11, color="#111"), customdata=[n.key for n in nodes], hovertext=hover,
        hoverinfo="text", marker=dict(symbol="square", size=size, color=[KIND_COLORS[n.kind] for n in nodes],
                                      line=dict(color=line_c, width=line_w)),
        selected=dict(marker=dict(opacity=1), textfont=dict(color="#111")),
        unselected=dict(marker=dict(opacity=1), textfont=dict(color="#111")), showlegend=False)
    ann: list[dict[str, Any]] = []
    drops = label_drops(nodes)
    for n in nodes:  # the shape under each box
        if n.shape:
            ann.append(dict(x=n.x, y=n.y, text=n.shape, showarrow=False, yshift=-(BOX_PX // 2 + 4 + drops[n.key]),
                            yanchor="top", font=dict(size=10, color="#555", family="monospace")))
    # the whole model
    chain = ["embed"] + [f"block:{i}" for i in range(L)] + ["ln_f", "logits"]
    ann += [_arrow(by["tok_emb"].x, by["tok_emb"].y, by["ids"].x, by["ids"].y),
            _arrow(by["embed"].x, by["embed"].y, by["tok_emb"].x, by["tok_emb"].y),
            _arrow(by["embed"].x, by["embed"].y, by["pos_emb"].x, by["pos_emb"].y)]
    half = {n.key: s // 2 + 2 for n, s in zip(nodes, size)}  # arrows stop at the (maybe smaller) box edge
    ann += [_arrow(by[b].x, by[b].y, by[a].x, by[a].y, standoff=half[b], start=half[a])
            for a, b in zip(chain, chain[1:])]
    ann.append(dict(x=0, y=Y_TOP - 0.4, text=f"positions<br>0…{T - 1}", showarrow=False,
                    font=dict(size=10, color="#555")))
    ann.append(_arrow(by["pos_emb"].x, by["pos_emb"].y, 0.25, Y_TOP - 0.4, start=0))
    blocks = [by[f"block:{i}"] for i in range(L)]
    ann.append(dict(x=(blocks[0].x + blocks[-1].x) / 2, y=Y_TOP, yshift=BOX_PX // 2 + 4, yanchor="bottom",
                    showarrow=False, text=f"× n_layer = {L} blocks" + ("" if L <= 6 else f", each {x_shape}"),
                    font=dict(size=12, color="#333")))
    lm = by["logits"]
    ann.append(dict(x=lm.x + 0.3, y=lm.y, yshift=BOX_PX // 2 + 4, xanchor="right", yanchor="bottom",
                    showarrow=False, align="right",
                    text="training: loss vs targets<br>generation: last row → softmax → sample",
                    font=dict(size=10, color="#555")))
    # inside the chosen block: the residual stream on top, the two branches below
    inner = [by[k] for k in ("ln1", "attn", "resid_mid", "ln2", "mlp", "resid_post")]
    xs0, xs1 = _stream_ends(by)
    fork1 = (inner[0].x + xs0) / 2
    fork2 = (inner[2].x + inner[3].x) / 2
    stream = dict(color="#999", width=3)
    shapes = [dict(type="line", x0=xs0, x1=xs1, y0=Y_STREAM, y1=Y_STREAM, line=stream, layer="below"),
              dict(type="rect", x0=xs0 - 0.15, x1=xs1 + 0.15, y0=Y_BRANCH - 0.78, y1=Y_STREAM + 0.55,
                   line=dict(color=SELECTED, width=1.5, dash="dot"), layer="below")]
    b = by[f"block:{layer}"]
    for cx in (xs0 - 0.15, xs1 + 0.15):  # zoom lines from the chosen block to its inside
        shapes.append(dict(type="line", x0=b.x, y0=Y_TOP - 0.55, x1=cx, y1=Y_STREAM + 0.55,
                           line=dict(color=SELECTED, width=1, dash="dot"), layer="below"))
    ann += [_arrow(inner[0].x, inner[0].y, fork1, Y_STREAM, start=0),
            _arrow(inner[1].x, inner[1].y, inner[0].x, inner[0].y),
            _arrow(inner[2].x, inner[2].y, inner[1].x, inner[1].y),
            _arrow(inner[2].x, inner[2].y, xs0, Y_STREAM, start=0),
            _arrow(inner[3].x, inner[3].y, fork2, Y_STREAM, start=0),
            _arrow(inner[4].x, inner[4].y, inner[3].x, inner[3].y),
            _arrow(inner[5].x, inner[5].y, inner[4].x, inner[4].y),
            _arrow(inner[5].x, inner[5].y, inner[2].x, inner[2].y),
            _arrow(xs1, Y_STREAM, inner[5].x, inner[5].y, standoff=0)]
    ann.append(dict(x=xs0 - 0.1, y=Y_STREAM + 0.5, xanchor="left", yanchor="top", showarrow=False, align="left",
                    text=f"<b>inside block {layer}</b> (all {L} blocks look like this): residual stream on top; "
                         f"attention with n_head = {config.n_head} heads of {config.head_dim}; "
                         f"MLP {config.n_embd} → {4 * config.n_embd} → {config.n_embd}",
                    font=dict(size=11, color="#333")))
    ann += [dict(x=x, y=Y_STREAM, text=t, showarrow=False, xanchor=side, yanchor="bottom", yshift=3,
                 font=dict(size=10, color="#555")) for x, t, side in ((xs0, "x in", "left"), (xs1, "x out", "right"))]
    return go.Figure(points, layout=dict(
        height=440, margin=dict(l=10, r=10, t=10, b=10), annotations=ann, shapes=shapes, dragmode=False,
        plot_bgcolor="white", clickmode="event+select",
        xaxis=dict(visible=False, range=list(x_range(nodes)), fixedrange=True),
        yaxis=dict(visible=False, range=[Y_BRANCH - 0.84, Y_TOP + 0.7], fixedrange=True)))


def pick(event: Any, stage: str, n_layer: int) -> tuple[str, int | None] | None:
    """(stage, layer or None = keep) for a click on the diagram, from what st.plotly_chart's
    on_select gives (the event, its .selection, or the point list). A block box keeps the current
    in-block stage (or shows the block's output) at that layer. None: no valid click."""
    point = last_selected(event, "points")
    if not isinstance(point, Mapping):
        return None
    key = point.get("customdata")
    if isinstance(key, (list, tuple)):
        key = key[0] if key else None
    if not isinstance(key, str):
        return None
    if key.startswith("block:"):
        try:
            layer = int(key[6:])
        except ValueError:
            return None
        if not 0 <= layer < n_layer:
            return None
        return (stage if STAGES.get(stage) and STAGES[stage].in_block else "resid_post"), layer
    return (key, None) if key in STAGES else None
