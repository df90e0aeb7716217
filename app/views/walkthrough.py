"""Walkthrough page logic: the pipeline diagram (app.views.walkthrough_diagram, re-exported here),
the selected stage's figures (stage_detail) and the token-id strip, the training view's table and
figure (of gpt.analysis.training_example: targets shifted by one, per-position loss) and one step
of the generation loop.

Pure (no Streamlit). Stage definitions, recordings and per-stage figures live in
app.views.walkthrough_stages. Sampling goes through gpt.generate (sampling_distribution, and the
Generator the Generate page uses), so what is shown here is what is drawn there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd
import plotly.graph_objects as go
import torch

from app.views import walkthrough_stages as vs
from app.views.tokens import esc, token_strs, unique_labels
from app.views.walkthrough_diagram import (DIAGRAM_PX, LABEL_CHAR_PX, LABEL_LINE_PX, SELECTED, Node,  # noqa: F401
                                           diagram_figure, diagram_nodes, label_drops, pick, x_range)
from gpt.analysis import TrainingExample
from gpt.config import GPTConfig
from gpt.generate import Step, sampling_distribution
from gpt.heads import attention_steps
from gpt.tokenizer import Tokenizer

if TYPE_CHECKING:
    from app.inspection import Inspection

STEP_FONT = 14  # px: token names on the sampling step's bars
PIPELINE = ("ids → token + position embedding → [LayerNorm → attention → + → LayerNorm → MLP → +] × n_layer "
            "→ LayerNorm → lm_head → logits, for the model and prompt in hand.")


# -- the selected stage ---------------------------------------------------------------------------------
def recording(stage: str, layer: int, n_layer: int, tab: str) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """What the page's Inspection records: (the names `stage` reads at `layer` (in 0..n_layer-1);
    the names the prompt is checked for, the biggest recording (attention at the last layer), so
    that no stage picked later is refused; whether to record now: only on the open "Pipeline"
    `tab`, since only the open tab's work runs)."""
    names = vs.stage_names(stage, layer)
    return names, vs.stage_names("attn", n_layer - 1), bool(names) and tab == "Pipeline"


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


def stage_heading(stage: str, layer: int) -> str:
    """The selected stage's heading: its label, and the block for a stage inside one."""
    return vs.STAGES[stage].label + (f" · block {layer}" if vs.STAGES[stage].in_block else "")


def shape_caption(config: GPTConfig, T: int, stage: str) -> str:
    """The caption over the stage's values: its shape for this prompt, and how to read them."""
    shape = vs.stage_shapes(config, T)[stage].replace("<br>", " ")
    how = "each token with its id below it" if stage == "ids" else "hover a cell for its value"
    return f"shape {shape} — {how}"


def ready_note(ms: float, n_names: int | None) -> str:
    """The caption under the pipeline: how long it took, with a trace of `n_names` names (None: none)."""
    traced = f"a trace recording {n_names} name(s)" if n_names is not None else "no trace"
    return f"ready in {ms:.0f} ms ({traced}, figures and sending them; traces are cached per prompt and stage)"


def ids_html(token_strs: Sequence[str], ids: Sequence[int]) -> str:
    """The prompt as the model gets it: each token with its id (and position on hover)."""
    cells = [f'<span title="position {i}" style="display:inline-block;margin:2px;padding:1px 4px;'
             f'background:#dde8f6;border-radius:3px;text-align:center;font-family:ui-monospace,monospace">'
             f'{esc(s)}<br><span style="font-size:0.75em;color:#555">{int(t)}</span></span>'
             for i, (s, t) in enumerate(zip(token_strs, ids))]
    return f'<div style="line-height:1.3">{"".join(cells)}</div>'


# -- training ------------------------------------------------------------------------------------------
def training_intro(T: int) -> str:
    """What the Training tab says first, for a prompt of T >= 2 tokens."""
    return (f"In training, the prompt is one example: the input **x** = ids[0 : {T - 1}] and the "
            f"targets **y** = ids[1 : {T}], the same text shifted by one. One forward pass predicts "
            f"the next token at all {T - 1} positions at once; the causal mask keeps each position "
            "from seeing its own target.")


def training_metrics(tv: TrainingExample) -> list[tuple[str, str]]:
    """(label, value) of the three numbers that show forward(x, y)'s loss is the per-position mean."""
    return [("mean of the per-position losses", f"{tv.mean:.4f}"), ("loss returned by forward(x, y)", f"{tv.loss:.4f}"),
            ("difference", f"{abs(tv.mean - tv.loss):.1e}")]


def target_labels(tv: TrainingExample, token_str: Callable[[int], str]) -> list[str]:
    """Unique axis labels of the targets y (numbered from position 1, where y starts), for loss_figure."""
    return unique_labels(token_strs(token_str, tv.y), start=1)


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
                                                                         for s in table["sampled"]]),
                textfont=dict(size=STEP_FONT - 2))
    tokens = dict(tickfont=dict(family="monospace", size=STEP_FONT))  # the token names: readable, not 10 px
    ticks = dict(tickfont=dict(size=STEP_FONT - 2))
    return vs.grid_figure([[
        vs.Cell(traces=[{**bars, "x": table["logit"].tolist(), "hovertemplate": "%{y} logit=%{x:.3f}<extra></extra>"}],
                title="last position's logits", y=tokens, x=ticks),
        vs.Cell(traces=[{**bars, "x": table[pcol].tolist(), "text": [f"{p:.1%}" for p in table[pcol]],
                         "textposition": "outside", "cliponaxis": False,
                         "hovertemplate": "%{y} p=%{x:.4f}<extra></extra>"}],
                title=f"softmax {pcol[2:]}: what is drawn from", y=tokens,
                x=dict(range=[0, min(1.1, 1.35 * top + 1e-3)], tickformat=".0%", **ticks))]],
        [1, 1], 28 * len(names) + 20)


LOOP = ("The loop, once per press: **1** crop to the last block_size tokens · **2** forward, keep the "
        "last position's logits · **3** softmax(logits / temperature) · **4** sample one token · **5** append it.")


def full_prompt(tokenizer: Tokenizer, text: str, drop_unknown: bool) -> tuple[list[int] | None, str | None]:
    """(the whole prompt's ids, None), or (None, why not): past block_size the loop's crop is what
    shortens it, so nothing is cut here. Unknown characters are dropped when `drop_unknown`."""
    try:
        return tokenizer.encode(text, errors="drop" if drop_unknown else "strict"), None
    except ValueError as e:  # gpt.tokenizer.UnknownCharsError is one
        return None, str(e)


def start_html(ids: Sequence[int], token_str: Callable[[int], str], block_size: int) -> str:
    """context_html of the sequence before the first press: what the first step's crop will keep."""
    return context_html(ids, token_str, max(0, len(ids) - block_size), None)


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
