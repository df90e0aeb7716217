"""Walkthrough page logic: the pipeline diagram drawn from the model's config and its click handler,
the selected stage's figures (stage_detail) and the token-id strip, the training view's table and
figure (of gpt.analysis.training_example: targets shifted by one, per-position loss) and one step
of the generation loop.

Pure (no Streamlit). Stage definitions, recordings and per-stage figures live in
app.views.walkthrough_stages. Sampling goes through gpt.generate (sampling_distribution, and the
Generator the Generate page uses), so what is shown here is what is drawn there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
import torch

from app.views.events import last_selected
from app.views import walkthrough_stages as vs
from app.views.tokens import esc
from app.views.walkthrough_stages import STAGES, stage_shapes
from gpt.analysis import TrainingExample
from gpt.config import GPTConfig
from gpt.generate import Step, sampling_distribution
from gpt.heads import attention_steps

if TYPE_CHECKING:
    from app.inspection import Inspection

KIND_COLORS = {"embed": "#9ecae1", "norm": "#fdd49e", "attn": "#fc9272", "mlp": "#a1d99b", "add": "#e3e3e3",
               "out": "#cdb8e6", "block": "#c6dbef"}
SELECTED = "#e4572e"
BOX_PX = 46  # marker side in pixels
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
    bx = min(1.0, 8.0 / L)  # block spacing: many layers squeeze together (smaller boxes, see diagram_figure)
    top = [Node("ids", "ids", 0, Y_TOP + 0.4, shapes["ids"], "embed"),
           Node("tok_emb", "wte", 1, Y_TOP + 0.4, shapes["tok_emb"], "embed"),
           Node("pos_emb", "wpe", 1, Y_TOP - 0.4, shapes["pos_emb"], "embed"),
           Node("embed", "+", 2, Y_TOP, shapes["embed"], "add")]
    top += [Node(f"block:{i}", f"block {i}" if L <= 8 else str(i), 3 + i * bx, Y_TOP,
                 shapes["embed"] if L <= 6 else "", "block") for i in range(L)]
    end = 3 + (L - 1) * bx
    top += [Node("ln_f", "ln_f", end + 1, Y_TOP, shapes["ln_f"], "norm"),
            Node("logits", "lm_head", end + 2, Y_TOP, shapes["logits"], "out")]
    x0, x1 = 0.3, end + 2.3  # the inside of a block spans the same width
    slot = [x0 + j * (x1 - x0) / 7 for j in range(8)]
    inner = [("ln1", 1, Y_BRANCH), ("attn", 2, Y_BRANCH), ("resid_mid", 3, Y_STREAM),
             ("ln2", 4, Y_BRANCH), ("mlp", 5, Y_BRANCH), ("resid_post", 6, Y_STREAM)]
    return top + [Node(k, STAGES[k].short, slot[j], y, shapes[k], STAGES[k].kind) for k, j, y in inner]


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
    size = [BOX_PX if not n.key.startswith("block:") or L <= 8 else max(12, BOX_PX * 8 // L) for n in nodes]
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
    for n in nodes:  # the shape under each box
        if n.shape:
            ann.append(dict(x=n.x, y=n.y, text=n.shape, showarrow=False, yshift=-(BOX_PX // 2 + 4), yanchor="top",
                            font=dict(size=10, color="#555", family="monospace")))
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
    xs0, xs1 = inner[0].x - 0.9 * (inner[1].x - inner[0].x), inner[-1].x + 0.9 * (inner[1].x - inner[0].x)
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
        xaxis=dict(visible=False, range=[min(xs0 - 0.3, -0.5), max(lm.x, xs1) + 0.6], fixedrange=True),
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


# -- the selected stage ---------------------------------------------------------------------------------
@dataclass
class Detail:
    """Everything the page draws for a selected stage: figures (values beside the norms, per-head
    norms for attention; then the hidden layer for the MLP) and, for attention, the opened head."""

    values: vs.StageValues | None
    figures: list[go.Figure]
    panels: list[vs.Panel]


def stage_detail(insp: "Inspection", stage: str) -> Detail:
    """The figures of `stage` at the Inspection's layer (and head, for attention), from its
    recording of stage_names(stage, layer) (rec None for "ids", which has no figures)."""
    rec, model, labels, token_str, layer, head = insp.rec, insp.model, insp.labels, insp.token_str, insp.layer, insp.head
    if stage == "ids" or rec is None:
        return Detail(None, [], [])
    sv = vs.stage_values(stage, layer, rec, model)
    figs = [vs.stage_figure(sv, labels, token_str)]
    if sv.hidden is not None:
        figs.append(vs.hidden_figure(sv.hidden, labels))
    panels = []
    if stage == "attn":
        panels = vs.attention_panels(attention_steps(rec, layer, head), labels, model.config.n_head)
    return Detail(sv, figs, panels)


def ids_html(token_strs: Sequence[str], ids: Sequence[int]) -> str:
    """The prompt as the model gets it: each token with its id (and position on hover)."""
    cells = [f'<span title="position {i}" style="display:inline-block;margin:2px;padding:1px 4px;'
             f'background:#dde8f6;border-radius:3px;text-align:center;font-family:ui-monospace,monospace">'
             f'{esc(s)}<br><span style="font-size:0.75em;color:#555">{int(t)}</span></span>'
             for i, (s, t) in enumerate(zip(token_strs, ids))]
    return f'<div style="line-height:1.3">{"".join(cells)}</div>'


# -- training ------------------------------------------------------------------------------------------
def training_table(tv: TrainingExample, token_str: Callable[[int], str]) -> pd.DataFrame:
    """One row per position: input x, target y, the top 5 (✓ marks the true next token),
    p(y), rank of y and the cross-entropy -ln p(y)."""
    rows = []
    for t in range(len(tv.x)):
        top = " · ".join(("✓" if i == tv.y[t] else "") + f"{token_str(i)} {p:.0%}"
                         for i, p in zip(tv.top_ids[t].tolist(), tv.top_probs[t].tolist()))
        rows.append({"pos": t, "input x": token_str(tv.x[t]), "target y": token_str(tv.y[t]),
                     "predicted top 5 (✓ = target)": top, "p(y)": float(tv.target_prob[t]),
                     "rank of y": int(tv.target_rank[t]), "loss −ln p(y)": float(tv.per_position[t])})
    return pd.DataFrame(rows)


def loss_figure(tv: TrainingExample, labels: Sequence[str]) -> go.Figure:
    """Bars of the per-position cross-entropy, labelled by target, with their mean as a line."""
    mean_line = dict(type="line", xref="paper", x0=0, x1=1, y0=tv.mean, y1=tv.mean,
                     line=dict(color=SELECTED, dash="dash"))
    note = dict(xref="paper", x=0, y=tv.mean, yanchor="bottom", xanchor="left", showarrow=False,
                text=f"mean {tv.mean:.4f}", font=dict(color=SELECTED))
    return go.Figure(go.Bar(x=list(labels), y=tv.per_position.tolist(), marker_color="#4c78a8",
                            hovertemplate="%{x}<br>loss=%{y:.3f} nats<extra></extra>"), layout=dict(
        title="cross-entropy at each position (predicting the target below it)", height=260,
        margin=dict(l=10, r=10, t=40, b=10), yaxis=dict(title="nats", rangemode="tozero"), shapes=[mean_line],
        annotations=[note], xaxis=dict(type="category", tickfont=dict(family="monospace", size=10), tickangle=-60)))


# -- generation ----------------------------------------------------------------------------------------
def context_html(ids: Sequence[int], token_str: Callable[[int], str], ctx_start: int, new: int | None) -> str:
    """The sequence as tokens: the part cropped away (before ctx_start) struck through, the context
    the model sees shaded, and the appended token (index `new`) outlined."""
    spans = []
    base = "padding:1px 2px;margin:1px;border-radius:3px;display:inline-block;font-family:ui-monospace,monospace;"
    for i, t in enumerate(ids):
        s = token_str(int(t))
        if i < ctx_start:
            style, title = "background:#f4f4f4;color:#999;text-decoration:line-through;", f"{i}: cropped away"
        elif i == new:
            style, title = "background:#ffd8cc;color:#111;outline:2px solid #e4572e;", f"{i}: appended"
        else:
            style, title = "background:#dde8f6;color:#111;", f"{i}: in the context"
        spans.append(f'<span style="{base}{style}" title="{title}">{esc(s)}</span>')
        if s.endswith("⏎"):
            spans.append("<br>")
    return f'<div style="line-height:1.9">{"".join(spans)}</div>'


def step_table(step: Step, temperature: float, top_k: int | None, top_p: float | None,
               token_str: Callable[[int], str], k: int = 10) -> pd.DataFrame:
    """The last position's logits → softmax(logits / temperature) (through
    gpt.generate.sampling_distribution, as drawn) for the k highest logits, and the sampled token."""
    logits = step.logits.float()
    probs = sampling_distribution(logits, temperature, top_k, top_p)
    plain = sampling_distribution(logits, 1.0)
    ids = torch.topk(logits, min(k, logits.numel())).indices.tolist()
    if step.token not in ids:
        ids.append(step.token)
    return pd.DataFrame([{"token": token_str(i), "id": i, "logit": float(logits[i]),
                          "softmax at temperature 1": float(plain[i]),
                          f"p at temperature {temperature:g}": float(probs[i]),
                          "sampled": "◀ sampled" if i == step.token else ""} for i in ids])


def step_figure(table: pd.DataFrame) -> go.Figure:
    """Two bar panels over the same tokens (step_table's rows): the raw logits, and the
    probabilities drawn from; the sampled token in orange."""
    pcol = [c for c in table.columns if c.startswith("p at temperature")][0]
    names, top = [f"{t} " for t in table["token"]], float(table[pcol].max())
    bars = dict(type="bar", y=names, orientation="h", marker=dict(color=[SELECTED if s else "#4c78a8"
                                                                         for s in table["sampled"]]))
    return vs.grid_figure([[
        vs.Cell(traces=[{**bars, "x": table["logit"].tolist(), "hovertemplate": "%{y} logit=%{x:.3f}<extra></extra>"}],
                title="last position's logits"),
        vs.Cell(traces=[{**bars, "x": table[pcol].tolist(), "text": [f"{p:.1%}" for p in table[pcol]],
                         "textposition": "outside", "cliponaxis": False,
                         "hovertemplate": "%{y} p=%{x:.4f}<extra></extra>"}],
                title=f"softmax {pcol[2:]}: what is drawn from",
                x=dict(range=[0, min(1.1, 1.35 * top + 1e-3)], tickformat=".0%"))]], [1, 1], 24 * len(names) + 20)


def crop_note(n: int, block_size: int) -> str:
    """What step 1 of the loop (crop to the last block_size tokens) does to a sequence of n tokens."""
    if n <= block_size:
        return f"The sequence has {n} tokens ≤ block_size {block_size}: nothing to crop, idx = ids (1, {n})."
    return (f"The sequence has {n} tokens > block_size {block_size}: crop to the last {block_size}, "
            f"idx = ids[{n - block_size}:] (1, {block_size}); the first {n - block_size} are cropped away "
            "and every position moves.")


def loop_intro(n: int, block_size: int) -> str:
    """What the Generation tab says before the first press, for a sequence of n tokens."""
    longer = "" if n > block_size else \
        f" (give a prompt longer than {block_size} tokens to see the crop at the first press)"
    return crop_note(n, block_size) + longer + " Press **Next token** to run the loop once."


def loop_steps(step: Step, settings: Any, ids: Sequence[int], config: GPTConfig,
               token_str: Callable[[int], str]) -> tuple[list[tuple[str, Any]], pd.DataFrame]:
    """The five steps of the sampling loop as they ran for `step`, drawn with `settings` (an
    app.generation.Settings): [(kind, body)] with kind "markdown" (body: text) or "figure" (body: the
    step's distribution), in reading order, and the step table they come from."""
    n, V, Tc = step.pos, config.vocab_size, step.pos - step.ctx_start  # n: length before this step
    kw = settings.generator_kwargs()
    how = "the most likely token (temperature 0 = greedy)" if settings.temperature == 0 else \
        "one token at random from these probabilities (torch.multinomial)"
    table = step_table(step, settings.temperature, kw["top_k"], kw["top_p"], token_str)
    kept = f", only the top {kw['top_k']} kept" if kw["top_k"] else ""
    parts: list[tuple[str, Any]] = [
        ("markdown", f"**1 · crop** — {crop_note(n, config.block_size)}"),
        ("markdown", f"**2 · forward** — idx (1, {Tc}) → logits (1, {Tc}, {V}); keep only the last position's "
                     f"row, logits[0, -1]: shape ({V},)."),
        ("markdown", f"**3 · softmax** — softmax(logits / {settings.temperature:g}) → probabilities ({V},){kept}."),
        ("figure", step_figure(table)),
        ("markdown", f"**4 · sample** — {how}: `{token_str(step.token)}` (id {step.token}), drawn with "
                     f"probability {step.prob:.3f}."),
        ("markdown", f"**5 · append** — the sequence grows to {len(ids)} tokens (the new one outlined; "
                     "struck-through tokens were cropped away for this step):"),
        ("markdown", context_html(ids, token_str, step.ctx_start, step.pos)),
    ]
    return parts, table
