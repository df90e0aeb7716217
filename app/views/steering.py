"""Steering figures and texts for the Generate page: the prompt sets and the watched token parsed with
messages, the vector in words, the two columns' KL per step, and the alpha sweep.

Pure (no Streamlit, no state, no caches): they read gpt.steering objects and app.generation.GenState.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import pandas as pd
import plotly.graph_objects as go

from app.views.tokens import light_figure
from gpt.steering import SteeringVector, SweepRow
from gpt.tokenizer import Tokenizer

if TYPE_CHECKING:
    from app.generation import GenState

SWEEP_ALPHAS = (0.0, 1.0, 2.0, 4.0, 8.0)
SITE_LABELS = {"resid_pre": "residual before the block (resid_pre)", "attn_out": "attention output (attn_out)",
               "resid_mid": "residual between attention and MLP (resid_mid)", "mlp_out": "MLP output (mlp_out)",
               "resid_post": "residual after the block (resid_post)"}
POLICY_LABELS = {"last": "last position of each prompt", "mean": "mean over each prompt's positions",
                 "aligned": "position by position (equal lengths)"}


def prompt_lines(tok: Tokenizer, text: str, which: str) -> list[list[int]]:
    """The prompts of a set typed one per line (blank lines skipped) as token ids; ValueError saying
    which line has characters this model does not know, or that the set is empty."""
    out = []
    for n, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        bad = tok.unknown_chars(line)
        if bad:
            raise ValueError(f"line {n} of the {which} prompt set has characters this model does not know: "
                             f"{', '.join(map(repr, bad))}; remove them")
        out.append(tok.encode(line))
    if not out:
        raise ValueError(f"the {which} prompt set is empty: type at least one prompt, one per line")
    return out


def token_id(tok: Tokenizer, text: str) -> int:
    """The one token `text` encodes to; ValueError when it is empty, unknown or more than one token."""
    if not text:
        raise ValueError("type a token (for this model, one token of text)")
    bad = tok.unknown_chars(text)
    if bad:
        raise ValueError(f"{text!r} has characters this model does not know: {', '.join(map(repr, bad))}")
    ids = tok.encode(text)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens for this model; give exactly one")
    return ids[0]


def vector_words(sv: SteeringVector, fingerprint: str) -> str:
    """The vector in one markdown line: its source (which says where it was taken), its norm, and
    whether it was made on this model."""
    same = "made on this model" if sv.model == fingerprint else \
        f"made on another model of the same width (fingerprint {sv.model})"
    return f"**Vector:** {sv.source}; ‖v‖ = {sv.norm:.3g}, {same}."


def diverged_at(a: "GenState", b: "GenState") -> int | None:
    """The first sequence index where the two columns' texts differ (None: they agree so far)."""
    for i, (x, y) in enumerate(zip(a.ids, b.ids)):
        if x != y:
            return i
    return None if len(a.ids) == len(b.ids) else min(len(a.ids), len(b.ids))


def kl_figure(kl: Sequence[float], n_prompt: int) -> go.Figure:
    """Bars of KL(steered ‖ default) in nats at each generated token (x: its sequence index)."""
    x = list(range(n_prompt, n_prompt + len(kl)))
    bar = dict(type="bar", x=x, y=[float(v) for v in kl], marker=dict(color="#e4572e"),
               hovertemplate="token %{x}<br>KL=%{y:.4f} nats<extra></extra>")
    return light_figure([bar], dict(
        height=220, margin=dict(l=10, r=10, t=40, b=30),
        title=dict(text="KL(steered ‖ default) of the next-token distributions"),
        xaxis=dict(title=dict(text="generated token"), type="category"),
        yaxis=dict(title=dict(text="nats"), rangemode="tozero")))


def sweep_figure(rows: Sequence[SweepRow], token_label: str) -> go.Figure:
    """p(token) after the prompt against alpha (log scale: steering moves it by orders of magnitude)."""
    line = dict(type="scatter", mode="lines+markers+text", x=[r.alpha for r in rows],
                y=[max(r.prob, 1e-12) for r in rows], text=[f"{r.prob:.3g}" for r in rows],
                textposition="top center", marker=dict(size=9, color="#4c78a8"), cliponaxis=False,
                hovertemplate="α=%{x}<br>p=%{y:.4g}<extra></extra>")
    return light_figure([line], dict(
        height=260, margin=dict(l=10, r=10, t=40, b=30),
        title=dict(text=f"α sweep: p({token_label}) after the prompt"),
        xaxis=dict(title=dict(text="α"), tickvals=[r.alpha for r in rows]),
        yaxis=dict(title=dict(text="probability"), type="log", dtick=1, exponentformat="power")))


def sweep_frame(rows: Sequence[SweepRow], decode: Callable[[Sequence[int]], str]) -> pd.DataFrame:
    """One row per alpha: alpha, p(token), and the greedy continuation as text (newlines as ⏎)."""
    return pd.DataFrame({"α": [r.alpha for r in rows], "p(token)": [r.prob for r in rows],
                         "first 40 tokens (greedy)": [decode(r.tokens).replace("\n", "⏎") for r in rows]})
