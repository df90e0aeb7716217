"""Generate-page figures: the text so far, each step's distribution and the attention of the
query that predicted the new token.

Pure (no Streamlit, no state): they read an app.generation.GenState (the sequence and its Steps),
which app.generation.GenerationSession keeps for the page.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import plotly.graph_objects as go
import torch

from app.views.tokens import distribution_figure, esc, light_figure, prob_color, unique_labels
from gpt.generate import Step

if TYPE_CHECKING:
    from app.generation import GenState


def sequence_html(token_strs: Sequence[str], n_prompt: int, steps: Sequence[Step]) -> str:
    """The text so far as tokens: the prompt plain grey, each generated token colored by the
    probability it was drawn with (log scale, as the next-token page), forced ones outlined."""
    spans = []
    first_new = len(token_strs) - len(steps)
    for i, s in enumerate(token_strs):
        base = 'style="padding:1px 2px;margin:1px;border-radius:3px;display:inline-block;' \
               'font-family:ui-monospace,monospace;color:#111;'
        if i < max(n_prompt, first_new):
            spans.append(f'<span {base}background:#ececec" title="prompt">{esc(s)}</span>')
        else:
            step = steps[i - first_new]
            tag = " (forced)" if step.forced else ""
            outline = "outline:2px dashed #e4572e;" if step.forced else ""
            spans.append(f'<span {base}background:{prob_color(step.prob)};{outline}" '
                         f'title="{i}: p={step.prob:.4f}{tag}">{esc(s)}</span>')
        if s.endswith("⏎"):
            spans.append("<br>")
    return f'<div style="line-height:1.9" data-new-tokens="{len(steps)}">{"".join(spans)}</div>'


def alternatives(step: Step, token_str: Callable[[int], str]) -> list[tuple[int, str, float, bool]]:
    """(token id, display string, probability, chosen) for each of the step's top-k tokens that
    could have been drawn (probability > 0), most likely first; buttons force one of them. The
    chosen token is always there: a forced token from outside the top k comes last."""
    out = []
    for i, p in zip(step.top_ids.tolist(), step.top_probs.tolist()):
        if p > 0 or i == step.token:
            out.append((int(i), token_str(int(i)), float(p), int(i) == step.token))
    if not any(a[3] for a in out):
        out.append((step.token, token_str(step.token), float(step.prob), True))
    return out


def step_attention_figure(attention: torch.Tensor, ctx_strs: Sequence[str], ctx_start: int = 0,
                          max_positions: int = 128) -> go.Figure:
    """Heatmap (layer·head) x context position of the attention row of the query that predicted
    the new token: attention (L, H, Tctx) from Step.attention. Only the last `max_positions`
    context positions are drawn (the weights there are what matters for the next token)."""
    L, H, T = attention.shape
    if T != len(ctx_strs):
        raise ValueError(f"attention covers {T} positions but {len(ctx_strs)} context tokens were given")
    keep = min(T, max_positions)
    z = attention.detach().float().cpu().reshape(L * H, T)[:, T - keep:]  # (L*H, keep)
    labels = unique_labels(ctx_strs[T - keep:], start=ctx_start + T - keep)
    rows = [f"L{l} H{h}" for l in range(L) for h in range(H)]
    trace = dict(type="heatmap", z=z.numpy(), x=labels, y=rows, colorscale="Blues", zmin=0.0,
                 hovertemplate="%{y}<br>key %{x}<br>weight=%{z:.3f}<extra></extra>")
    title = "attention of the predicting query" + (f" (last {keep})" if keep < T else "")
    return light_figure([trace], dict(
        height=min(640, max(220, 14 * L * H + 120)), margin=dict(l=10, r=10, t=30, b=10),
        title=dict(text=title),
        xaxis=dict(type="category", tickfont=dict(family="monospace", size=10), tickangle=-60),
        yaxis=dict(type="category", autorange="reversed", tickfont=dict(size=10))))


@dataclass
class GenerateView:
    """What the Generate page draws: the text so far and, after a step, that step's figures."""

    text: str  # HTML
    distribution: go.Figure | None
    attention: go.Figure | None
    alternatives: list[tuple[int, str, float, bool]]


def build(state: "GenState", token_str: Callable[[int], str]) -> GenerateView:
    """The page's figures for `state` (the last step's distribution and attention, if any)."""
    strs = [token_str(i) for i in state.ids]
    text = sequence_html(strs, len(state.prompt), state.steps)
    if not state.steps:
        return GenerateView(text, None, None, [])
    step = state.steps[-1]
    alts = alternatives(step, token_str)
    chosen = next((j for j, a in enumerate(alts) if a[3]), None)
    dist = distribution_figure([a[1] for a in alts], [a[2] for a in alts], chosen,
                               title=f"token {step.pos}: the distribution it was drawn from",
                               highlight_label="forced" if step.forced else "drawn")
    att = None
    if step.attention is not None:
        att = step_attention_figure(step.attention, strs[step.ctx_start:step.pos], step.ctx_start)
    return GenerateView(text, dist, att, alts)
