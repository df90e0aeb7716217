"""Attribution page figures: direct logit attribution (bars, a clickable layer x head grid), one
head's attention pattern beside its contribution map, and the information-flow graph with the
logit lens of a clicked node (the graph itself is drawn by app.views.flow_graph).

Pure functions (no Streamlit): an Inspection (its recording of NAMES) and gpt.attribution /
gpt.flow results in, plotly figures and short texts out. Clickable grids are scatter squares
(plotly heatmaps send no clicks, streamlit #8760); each point carries its cell in customdata.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import plotly.graph_objects as go
import torch

from app.views.attention import pattern_figure
from app.views.events import last_selected
from app.views.tokens import light_figure
from gpt import attribution, flow

if TYPE_CHECKING:
    from app.inspection import Inspection

NAMES = tuple(dict.fromkeys(attribution.NEEDS + flow.NEEDS))  # what the page records
TOP_K = 12  # bars drawn; the rest are summed into one bar
MAPS_CAPTION = ("Left: the attention weights. Right: the share of each query's residual after attention that this "
                "head wrote from each source token (Ferrando & Voita's proximity); its colour bar ends at the largest "
                "share outside row 0. Weight on a token whose value moves nothing shows on the left only.")
FLOW_MAX_FLOATS = 1_500_000_000  # above this the graph takes several seconds here: ask for a shorter prompt
POS_COLOR, NEG_COLOR, SUM_COLOR, REST_COLOR = "#d6604d", "#4393c3", "#333333", "#bbbbbb"
GRID_PLOT_W = 300  # px of the layer x head grid's plot area
DIVERGING = [[0.0, "#2166ac"], [0.5, "#f7f7f7"], [1.0, "#b2182b"]]  # negative blue, positive red, as the bars


def quoted(s: str) -> str:
    """A token's display string in quotes, for titles and labels."""
    return f"'{s}'"


def component_label(c: attribution.Component, token: str, pos: int) -> str:
    """A component's bar label: the embeddings name their token and position."""
    if c.kind == "embed":
        return f"token embed {quoted(token)}"
    if c.kind == "pos_embed":
        return f"pos embed {pos}"
    return c.label


def target_text(token: str, other: str | None) -> str:
    """"logit 'e'" or "logit 'e' − logit 't'"."""
    return f"logit {quoted(token)}" + (f" − logit {quoted(other)}" if other is not None else "")


def edited_note(insp: "Inspection") -> str | None:
    """The line each view shows when it describes the edited model."""
    return f"Computed on the edited model: {insp.edit.description}." if insp.edit else None


def flow_note(insp: "Inspection", contrib: flow.Contributions) -> str | None:
    """edited_note, plus where a non-linear edit's head outputs were split by attention."""
    note = edited_note(insp)
    if note and contrib.split_by_attention:
        note += (f" In layer(s) {', '.join(map(str, contrib.split_by_attention))} the edit is not linear in a "
                 "head's output, so each edited output is split over its source tokens by attention.")
    return note


def typed_token(insp: "Inspection", text: str) -> tuple[int | None, str | None]:
    """A typed token as (its id, None), or (None, what is wrong) when `text` is not exactly one token."""
    ids = insp.loaded.tokenizer.encode(text, errors="drop")
    if len(ids) != 1:
        return None, f"The typed token must be exactly one token; {text!r} is {len(ids)}. Type one token."
    return ids[0], None


# -- direct logit attribution -----------------------------------------------------------------------
def bar_range(vals: Sequence[float]) -> list[float]:
    """An x range for horizontal bars of `vals` that keeps 0 in view and leaves room beside each
    bar's end for its value label."""
    lo, hi = min(0.0, *vals), max(0.0, *vals)
    pad = 0.3 * max(hi - lo, 1e-6)
    return [lo - (pad if lo < 0 else 0.0), hi + (pad if hi > 0 else 0.0)]


def bars_figure(d: attribution.DLA, labels: Sequence[str], title: str, k: int = TOP_K) -> go.Figure:
    """The k largest terms by |value| (largest on top, colored by sign), one bar for all the others,
    and a dark bar for their sum, which equals the logit. `labels`: one per component."""
    top = d.top(k)
    rest = [i for i in range(len(labels)) if i not in set(top)]
    names = [labels[i] for i in top]
    vals = [float(d.values[i]) for i in top]
    colors = [POS_COLOR if v >= 0 else NEG_COLOR for v in vals]
    if rest:
        names.append(f"the other {len(rest)} terms")
        vals.append(float(d.values[rest].sum()))
        colors.append(REST_COLOR)
    names.append(f"sum of all {len(labels)} terms")
    vals.append(d.total)
    colors.append(SUM_COLOR)
    bar = dict(type="bar", x=vals, y=names, orientation="h", marker=dict(color=colors),
               text=[f"{v:+.3f}" for v in vals], textposition="outside", cliponaxis=False,
               hovertemplate="%{y}<br>%{x:.4f}<extra></extra>")
    return light_figure([bar], dict(
        title=dict(text=title), height=max(260, 24 * len(names) + 90), margin=dict(l=10, r=10, t=50, b=40),
        xaxis=dict(title=dict(text="direct contribution to the logit"), range=bar_range(vals), zeroline=True),
        yaxis=dict(title=dict(text="component"), autorange="reversed", type="category",
                   tickfont=dict(family="monospace"))))


def squares_figure(values: torch.Tensor, rows: Sequence[str], cols: Sequence[str], title: str, value_name: str,
                   xtitle: str, ytitle: str, selected: tuple[int, int] | None = None) -> go.Figure:
    """A (R, C) grid as clickable scatter squares, diverging colors around 0; customdata [r, c, value].
    `selected` gets an outline."""
    R, C = values.shape
    flat = values.detach().double().reshape(-1).tolist()
    m = max(1e-9, max(abs(v) for v in flat))
    # fixed size (drawn at that size, in a column about 400 px wide) and fixed margins, so the plot area
    # is known: squares fill 80% of their cell and never overlap; the colour bar lies under the plot
    side = max(8, min(40, int(0.8 * GRID_PLOT_W / C)))
    plot_h = max(100, int(R * side / 0.8))
    line = [3 if selected == (r, c) else 0 for r in range(R) for c in range(C)]
    scatter = dict(type="scatter", mode="markers", x=[cols[c] for _ in range(R) for c in range(C)],
                   y=[rows[r] for r in range(R) for _ in range(C)],
                   customdata=[[r, c, v] for (r, c), v in zip(((r, c) for r in range(R) for c in range(C)), flat)],
                   unselected=dict(marker=dict(opacity=1)),
                   marker=dict(symbol="square", size=side, color=flat, colorscale=DIVERGING, cmin=-m, cmax=m,
                               colorbar=dict(title=dict(text=value_name, side="right"), orientation="h", thickness=12,
                                             yref="container", y=0.0, yanchor="bottom", len=0.9),
                               line=dict(width=line, color="#111")),
                   hovertemplate="%{y} %{x}<br>" + value_name + " %{customdata[2]:.4f}<extra></extra>")
    return light_figure([scatter], dict(
        title=dict(text=title), width=GRID_PLOT_W + 80, height=plot_h + 50 + 120,
        margin=dict(l=70, r=10, t=50, b=120), clickmode="event+select", dragmode=False,
        # explicit ranges: autorange would pad for the marker size and squeeze the cells together
        xaxis=dict(type="category", title=dict(text=xtitle), automargin=False, range=[-0.5, C - 0.5]),
        yaxis=dict(type="category", title=dict(text=ytitle), automargin=False, range=[R - 0.5, -0.5])))


def grid_pick(event: Any, n_rows: int, n_cols: int) -> tuple[int, int] | None:
    """The (row, col) of the square clicked in a squares_figure, from st.plotly_chart's selection
    event; None when nothing (valid) is selected."""
    item = last_selected(event, "points")
    data = item.get("customdata") if isinstance(item, dict) else None
    if not isinstance(data, (list, tuple)) or len(data) < 2:
        return None
    try:
        r, c = int(data[0]), int(data[1])
    except (TypeError, ValueError):
        return None
    return (r, c) if 0 <= r < n_rows and 0 <= c < n_cols else None


@dataclass
class DLAView:
    """What the DLA part of the page draws for one (position, token, other)."""
    dla: attribution.DLA
    bars: go.Figure
    heads: go.Figure
    summary: str  # "logit 'e' at 12:'h' = 3.214 = the sum of the 27 terms"
    top_head: tuple[int, int]  # the head with the largest |term|
    note: str | None  # the edited-model line, or None


def build_dla(insp: "Inspection", pos: int, token: int, other: int | None = None,
              selected: tuple[int, int] | None = None) -> DLAView:
    """DLA at `pos` of `token` (minus `other`) from the Inspection's recording (no forward)."""
    d = attribution.dla(insp.model, insp.ids, pos, token, other, insp.edit, rec=insp.rec)
    tok = insp.token_str(token)
    oth = None if other is None else insp.token_str(other)
    at = f"at {insp.labels[d.pos]}"
    labels = [component_label(c, insp.strs[d.pos], d.pos) for c in d.components]
    what = target_text(tok, oth)
    L, H = insp.config.n_layer, insp.config.n_head
    grid = d.heads(L, H)  # (L, H)
    flat = int(grid.abs().reshape(-1).argmax())
    return DLAView(
        dla=d,
        bars=bars_figure(d, labels, f"Largest terms of {what} {at}"),
        heads=squares_figure(grid, [f"L{l}" for l in range(L)], [f"H{h}" for h in range(H)],
                             f"Head terms of {what} {at}", "term", "head", "layer", selected),
        summary=f"{what} {at} = **{d.logit:.4f}** = the sum of the {len(labels)} terms ({d.total:.4f}); "
                f"final LayerNorm scale at this position frozen at {d.scale:.4f}.",
        top_head=(flat // H, flat % H),
        note=edited_note(insp))


def map_top(cmap: torch.Tensor) -> float:
    """Where a contribution map's colour bar ends: its largest share outside row 0. Query 0 sees only
    itself, so a head there often carries a large share of a small residual, which would wash out
    every other row (app.views.attention.pattern_top clips the pattern for the same reason)."""
    z = cmap[1:] if cmap.size(0) > 1 else cmap
    return max(float(z.max()), 1e-6)


def contribution_figure(cmap: torch.Tensor, pattern: torch.Tensor, labels: Sequence[str], title: str) -> go.Figure:
    """One head's contribution map (T, T) as a heatmap, rows queries and columns source tokens, with
    the attention weight beside each share on hover."""
    z = cmap.detach().float().cpu()
    T = z.size(0)
    if tuple(z.shape) != (len(labels), len(labels)) or pattern.shape != z.shape:
        raise ValueError(f"expected (T, T) maps with T={len(labels)} labels, got {tuple(z.shape)} and "
                         f"{tuple(pattern.shape)}")
    tick = dict(family="monospace", size=10)
    trace = dict(type="heatmap", z=z.numpy(), x=list(labels), y=list(labels), colorscale="Oranges",
                 zmin=0.0, zmax=map_top(z), customdata=pattern.detach().float().cpu().numpy(),
                 colorbar=dict(title=dict(text="share")),
                 hovertemplate="query %{y}<br>source %{x}<br>share of the output %{z:.4f}<br>"
                               "attention %{customdata:.4f}<extra></extra>")
    return light_figure([trace], dict(
        title=dict(text=title), height=min(720, max(320, 14 * T + 120)), margin=dict(l=10, r=10, t=40, b=40),
        xaxis=dict(type="category", title=dict(text="source token (key)"), tickfont=tick, tickangle=-60),
        yaxis=dict(type="category", title=dict(text="query"), autorange="reversed", tickfont=tick)))


def build_head(insp: "Inspection", contrib: flow.Contributions, layer: int, head: int) -> tuple[go.Figure, go.Figure]:
    """(attention pattern, contribution map) of one head on this prompt, side by side on the page."""
    pattern = insp.rec[f"blocks.{layer}.attn.hook_pattern"][0, head].float()  # (T, T)
    name = f"L{layer}H{head}"
    return (pattern_figure(pattern, insp.labels, title=f"{name} attention pattern (where it looks)"),
            contribution_figure(contrib.head_map(layer, head), pattern, insp.labels,
                                f"{name} contribution map (what it wrote)"))


def flow_too_long(insp: "Inspection") -> str | None:
    """Why the flow graph is not computed for this prompt (too much work here), or None."""
    cfg = insp.config
    n = flow.cost(cfg.n_layer, cfg.n_head, cfg.n_embd, insp.T)
    if n <= FLOW_MAX_FLOATS:
        return None
    T = insp.T
    while T > 1 and flow.cost(cfg.n_layer, cfg.n_head, cfg.n_embd, T) > FLOW_MAX_FLOATS:
        T -= 1
    return (f"The contributions of {insp.T} tokens through this model take {n / 1e9:.1f} G distance terms, "
            f"several seconds here: shorten the prompt to at most {T} tokens for the contribution maps and the graph.")


# -- a node of the graph --------------------------------------------------------------------------
def node_name(node: flow.Node, labels: Sequence[str]) -> str:
    """"L2 out at 5:'h'"-style name of a graph node."""
    where = labels[node.pos]
    if node.kind == "embed":
        return f"embedding at {where}"
    return f"L{node.layer} {dict(mid='after attention', mlp='MLP', out='output')[node.kind]} at {where}"


def node_figures(nt: flow.NodeTokens, token_str: Callable[[int], str], name: str) -> tuple[go.Figure, go.Figure]:
    """(promoted, suppressed) bars of a node's logit lens, token strings on the y axis."""
    def fig(ids: list[int], vals: list[float], title: str, color: str) -> go.Figure:
        labels = [f"{i + 1}. {quoted(token_str(t))}" for i, t in enumerate(ids)]
        bar = dict(type="bar", x=vals, y=labels, orientation="h", marker=dict(color=color),
                   text=[f"{v:+.2f}" for v in vals], textposition="outside", cliponaxis=False,
                   hovertemplate="%{y}<br>logit %{x:.4f}<extra></extra>")
        return light_figure([bar], dict(
            title=dict(text=title), height=max(200, 24 * len(labels) + 90), margin=dict(l=10, r=10, t=50, b=40),
            xaxis=dict(title=dict(text="logit"), range=bar_range(vals)), yaxis=dict(title=dict(text="next token"), autorange="reversed",
                                                             type="category", tickfont=dict(family="monospace"))))
    return (fig(nt.promoted, nt.promoted_logits, f"{name}: promotes", POS_COLOR),
            fig(nt.suppressed, nt.suppressed_logits, f"{name}: suppresses", NEG_COLOR))


def build_node(insp: "Inspection", node: flow.Node, k: int = 8) -> tuple[go.Figure, go.Figure, str]:
    """(promoted, suppressed, how it was read) for a clicked graph node, from the recording."""
    nt = flow.node_tokens(insp.model, insp.rec, node, k)
    name = node_name(node, insp.labels)
    return (*node_figures(nt, insp.token_str, name), f"{name}: {nt.what}.")


def choices(insp: "Inspection", pos: int, k: int = 10) -> tuple[list[int], dict[int, str]]:
    """The model's k most likely next tokens at `pos` (under the edit), most likely first, and
    their labels ("'e'  43.1%"), for the token and versus-token pickers."""
    p = torch.softmax(insp.rec["logits"][0, pos].float(), dim=-1)  # (V,)
    top = torch.topk(p, min(k, p.numel()))
    ids = top.indices.tolist()
    return ids, {i: f"{quoted(insp.token_str(i))}  {float(v):.1%}" for i, v in zip(ids, top.values)}
