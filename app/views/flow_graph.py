"""The information-flow graph (gpt.flow.Graph) as a plotly figure: tokens along the x axis, layers
up the y axis, edges as lines whose width is their share, nodes as clickable markers.

Each block has three rows: "attn" (the residual after attention), "MLP" (drawn a little to the
right, so the straight residual edge from attn to out stays visible beside the path through the
MLP) and "out" (the block's output); the embeddings sit at the bottom. An edge from a token's own
earlier node through attention bows to the left of the residual edge it would hide. Edges are
grouped by kind and width into a few traces (a trace per edge would be slow); every edge gets an
invisible marker at its middle that carries its hover text. Pure: no Streamlit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import plotly.graph_objects as go

from app.views.events import last_selected
from app.views.tokens import light_figure
from gpt.flow import Edge, Graph, Node, level

KIND_COLORS = {"attn": "#4c78a8", "resid": "#9d9d9d", "mlp": "#f58518"}
NODE_COLORS = {"embed": "#54a24b", "mid": "#4c78a8", "mlp": "#f58518", "out": "#333333"}
MLP_DX, SELF_DX = 0.32, -0.22  # x offsets of the MLP node and of a self-attention edge's bend
MAX_WIDTH = 10.0  # px of an edge carrying a whole node (share 1)
WIDTH_STEPS = 8  # edges are drawn in this many widths


def node_xy(n: Node) -> tuple[float, float]:
    """Where a node sits: x its position (MLP nodes shifted right), y its level."""
    return n.pos + (MLP_DX if n.kind == "mlp" else 0.0), float(level(n))


def edge_path(e: Edge) -> list[tuple[float, float]]:
    """The points of an edge's line: straight, or bent left for attention from a token to itself."""
    (x0, y0), (x1, y1) = node_xy(e.src), node_xy(e.dst)
    if e.kind == "attn" and e.src.pos == e.dst.pos:
        return [(x0, y0), (x0 + SELF_DX, (y0 + y1) / 2), (x1, y1)]
    return [(x0, y0), (x1, y1)]


def width(weight: float) -> float:
    """An edge's line width: proportional to its share, in WIDTH_STEPS steps, at least 1 px."""
    step = MAX_WIDTH / WIDTH_STEPS
    return max(1.0, round(min(1.0, weight) * MAX_WIDTH / step) * step)


def level_labels(n_layer: int) -> list[str]:
    """The y axis's tick labels, bottom to top: embed, then L0 attn, L0 MLP, L0 out, ..."""
    out = ["embed"]
    for l in range(n_layer):
        out += [f"L{l} attn", f"L{l} MLP", f"L{l} out"]
    return out


def edge_text(e: Edge, labels: Sequence[str]) -> str:
    """Hover text of an edge: what flows where, and its share (per head for attention)."""
    src, dst = labels[e.src.pos], labels[e.dst.pos]
    layer = e.dst.layer
    if e.kind == "attn":
        heads = ", ".join(f"H{h} {w:.3f}" for h, w in enumerate(e.heads) if w > 0)
        return f"L{layer} attention {src} → {dst}: {e.weight:.3f}<br>{heads}"
    if e.kind == "mlp":
        return f"L{layer} MLP at {dst}: {e.weight:.3f} of the block output"
    return f"L{layer} residual at {dst}: {e.weight:.3f}"


@dataclass
class GraphView:
    """The figure and the counts the page shows under it."""
    figure: go.Figure
    n_nodes: int
    n_edges: int


def graph_figure(g: Graph, labels: Sequence[str], n_layer: int, title: str,
                 selected: Node | None = None) -> GraphView:
    """The graph as a figure. x ticks are the token labels of the positions the graph touches (all
    of them for a short prompt); y ticks name the levels. Node points carry [kind, layer, pos] in
    customdata (node_pick reads them back); `selected` gets a ring."""
    data: list[dict[str, Any]] = []
    groups: dict[tuple[str, float], list[Edge]] = {}
    for e in g.edges:
        groups.setdefault((e.kind, width(e.weight)), []).append(e)
    for (kind, w), edges in sorted(groups.items(), key=lambda kv: kv[0][1]):  # thin under thick
        xs: list[float | None] = []
        ys: list[float | None] = []
        for e in edges:
            for x, y in edge_path(e):
                xs.append(x)
                ys.append(y)
            xs.append(None)
            ys.append(None)
        data.append(dict(type="scatter", mode="lines", x=xs, y=ys, hoverinfo="skip", showlegend=False,
                         line=dict(color=KIND_COLORS[kind], width=w), opacity=0.75))
    mids = [edge_path(e)[len(edge_path(e)) // 2] if e.kind == "attn" and e.src.pos == e.dst.pos else
            ((node_xy(e.src)[0] + node_xy(e.dst)[0]) / 2, (node_xy(e.src)[1] + node_xy(e.dst)[1]) / 2) for e in g.edges]
    data.append(dict(type="scatter", mode="markers", x=[m[0] for m in mids], y=[m[1] for m in mids],
                     marker=dict(size=7, color="rgba(0,0,0,0)"), showlegend=False,
                     text=[edge_text(e, labels) for e in g.edges], hovertemplate="%{text}<extra></extra>"))
    out = Node("out", n_layer - 1, g.pos)
    xy = [node_xy(n) for n in g.nodes]
    data.append(dict(type="scatter", mode="markers", x=[p[0] for p in xy], y=[p[1] for p in xy], showlegend=False,
                     customdata=[[n.kind, n.layer, n.pos] for n in g.nodes],
                     text=[node_text(n, labels) for n in g.nodes], hovertemplate="%{text}<extra></extra>",
                     unselected=dict(marker=dict(opacity=1)),
                     marker=dict(size=[16 if n == out else 11 for n in g.nodes],
                                 symbol=["star" if n == out else "circle" for n in g.nodes],
                                 color=[NODE_COLORS[n.kind] for n in g.nodes],
                                 line=dict(width=[3 if n == selected else 1 for n in g.nodes],
                                           color=["#e4572e" if n == selected else "#ffffff" for n in g.nodes]))))
    positions = sorted({n.pos for n in g.nodes}) if len(labels) > 40 else list(range(len(labels)))
    tick = dict(family="monospace", size=10)
    return GraphView(light_figure(data, dict(
        title=dict(text=title), height=max(360, min(1100, 46 * n_layer * 3 + 120)), margin=dict(l=10, r=10, t=50, b=40),
        clickmode="event+select", dragmode=False, hovermode="closest",
        xaxis=dict(title=dict(text="token"), tickmode="array", tickvals=positions, tickfont=tick, tickangle=-60,
                   ticktext=[labels[p] for p in positions], range=[min(positions) - 0.6, max(positions) + 0.6],
                   showgrid=True, gridcolor="#eeeeee", zeroline=False),
        yaxis=dict(title=dict(text="layer"), tickmode="array", tickvals=list(range(3 * n_layer + 1)),
                   ticktext=level_labels(n_layer), range=[-0.6, 3 * n_layer + 0.6], zeroline=False,
                   showgrid=True, gridcolor="#eeeeee"))), len(g.nodes), len(g.edges))


def caption(view: GraphView, threshold: float) -> str:
    """The line under the graph: its size and how to read it."""
    return (f"{view.n_nodes} nodes and {view.n_edges} edges above {threshold:.3f}. Blue: attention from a source "
            "token (summed over heads; hover for each head), grey: the residual stream, orange: the MLP; width: "
            "the share. Nodes: green embeddings, blue after attention, orange MLPs, dark block outputs, the star "
            "the prediction. Click a node for its logit lens.")


def node_text(n: Node, labels: Sequence[str]) -> str:
    """Hover text of a node."""
    what = {"embed": "embedding", "mid": "after attention", "mlp": "MLP", "out": "block output"}[n.kind]
    layer = "" if n.kind == "embed" else f"L{n.layer} "
    return f"{layer}{what} at {labels[n.pos]}<br>click: its logit lens"


def node_pick(event: Any, n_layer: int, T: int) -> Node | None:
    """The node clicked in a graph_figure, from st.plotly_chart's selection event (edges and their
    hover markers are ignored); None when no valid node is selected."""
    item = last_selected(event, "points")
    data = item.get("customdata") if isinstance(item, dict) else None
    if not isinstance(data, (list, tuple)) or len(data) != 3 or data[0] not in NODE_COLORS:
        return None
    try:
        node = Node(str(data[0]), int(data[1]), int(data[2]))
    except (TypeError, ValueError):
        return None
    ok = 0 <= node.pos < T and (node.layer == -1 if node.kind == "embed" else 0 <= node.layer < n_layer)
    return node if ok else None
