"""The Layers page's lens comparison: the logit lens and the tuned lens on the prompt, as two tables
and one chart of three per-layer measures (KL to the final distribution, the final top-1 token's
rank, entropy), Workbench's statistics.

Pure functions (no Streamlit): a recording and a gpt.tuned_lens.TunedLens in, plotly figures out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import plotly.graph_objects as go
import torch

from app.views import layers as vl
from app.views.tokens import light_figure
from gpt import tuned_lens as tl
from gpt.analysis import LogitLens

if TYPE_CHECKING:
    from app.inspection import Inspection

CHUNK = 128  # positions read through the unembedding at once: (L+1, 128, 50257) fp32 is 340 MB for GPT-2
COLORS = {"logit lens": "#4c78a8", "tuned lens": "#e4572e"}
MEASURES = (("kl", "KL(final ‖ lens), nats", "linear"), ("rank", "rank of the final top-1 token", "log"),
            ("entropy", "entropy, nats", "linear"))


@dataclass
class LensPair:
    """Both lenses on one prompt: tables at the window's positions, measures at every position
    (tuned_* None when there is no tuned lens)."""

    logit: LogitLens
    tuned: LogitLens | None
    logit_m: tl.LensMeasures
    tuned_m: tl.LensMeasures | None


@torch.no_grad()
def compare(model: torch.nn.Module, rows: torch.Tensor, lens: "tl.TunedLens | None", positions: Sequence[int],
            ids: Sequence[int], k: int = 5, chunk: int = CHUNK) -> LensPair:
    """Tables (at `positions`) and measures (at all T positions) of the logit lens and, when given,
    the tuned lens, from residual rows (L+1, T, C) (gpt.tuned_lens.residual_rows), a chunk of
    positions at a time so a large vocabulary never needs (L+1, T, V) at once."""
    T, want = rows.size(1), list(positions)
    parts: dict[str, list] = {"logit": [], "tuned": []}
    tables: dict[str, list[torch.Tensor]] = {"logit": [], "tuned": []}
    for i in range(0, T, chunk):
        sl = rows[:, i:i + chunk]  # (L+1, c, C)
        for name, which in (("logit", None), ("tuned", lens)):
            if name == "tuned" and lens is None:
                continue
            logp = tl.lens_log_probs(model, sl, which)  # (L+1, c, V)
            parts[name].append(tl.measures(logp))
            sel = [p - i for p in want if i <= p < i + sl.size(1)]
            if sel:
                tables[name].append(logp[:, sel].cpu())
    out = {}
    for name in ("logit", "tuned"):
        if not parts[name]:
            out[name] = (None, None)
            continue
        m = tl.LensMeasures(*(torch.cat([getattr(p, f) for p in parts[name]], dim=1) for f in ("kl", "rank", "entropy")))
        out[name] = (tl.lens_table(torch.cat(tables[name], dim=1), want, ids, k), m)
    return LensPair(out["logit"][0], out["tuned"][0], out["logit"][1], out["tuned"][1])


def measures_figure(pair: LensPair, rows: Sequence[str]) -> go.Figure:
    """Three panels side by side, one line per lens: each measure's mean over the prompt's positions
    at every row (embed, after block 0, ...); hover gives the value and the row."""
    data = []
    for j, (field, title, _) in enumerate(MEASURES):
        for name, m in (("logit lens", pair.logit_m), ("tuned lens", pair.tuned_m)):
            if m is None:
                continue
            y = getattr(m, field).float().mean(dim=1)  # (L+1,): mean over positions
            data.append(dict(type="scatter", mode="lines+markers", x=list(rows), y=y.tolist(), name=name,
                             legendgroup=name, showlegend=j == 0, line=dict(color=COLORS[name]),
                             xaxis=f"x{j + 1}" if j else "x", yaxis=f"y{j + 1}" if j else "y",
                             hovertemplate=f"{name}<br>%{{x}}<br>{title}: %{{y:.3f}}<extra></extra>"))
    layout = dict(height=340, margin=dict(l=10, r=10, t=60, b=10),
                  legend=dict(orientation="h", x=1, xanchor="right", y=1.2, yanchor="bottom"),
                  title=dict(text="per layer, mean over the prompt's positions", x=0, xanchor="left"))
    for j, (_, title, scale) in enumerate(MEASURES):
        lo = j * 0.35
        s = str(j + 1) if j else ""
        layout[f"xaxis{s}"] = dict(domain=[lo, lo + 0.29], type="category", tickangle=-45, anchor=f"y{s}")
        layout[f"yaxis{s}"] = dict(title=dict(text=title), type=scale, anchor=f"x{s}", rangemode="tozero")
    return light_figure(data, layout)


def held_out_text(lens: "tl.TunedLens") -> str:
    """One sentence from the lens's JSON: what it was fitted on and its held-out KL per layer."""
    m = lens.meta
    ho = m.get("held_out") or {}
    logit, tuned = ho.get("logit") or [], ho.get("tuned") or []
    pairs = ", ".join(f"{a:.2f} → {b:.2f}" for a, b in zip(logit[:-1], tuned[:-1]))
    return (f"Tuned lens fitted to {m.get('checkpoint', '?')} on {m.get('windows', '?')} validation windows of "
            f"{m.get('data', '?')} ({m.get('steps', '?')} steps, {m.get('fit_seconds', '?')} s). Held-out KL per "
            f"layer, logit lens → tuned lens (nats): {pairs}.")


@dataclass
class LensView:
    """The lens section's figures: logit (and tuned) tables, the measures chart."""

    logit: go.Figure
    tuned: go.Figure | None
    measures: go.Figure


def build(insp: "Inspection", lens: "tl.TunedLens | None", positions: Sequence[int],
          width_px: float = vl.LENS_PLOT_PX) -> LensView:
    """The figures from an Inspection recording app.views.layers.NAMES (which holds the lens's rows);
    tables of `width_px` (half the page when both are shown)."""
    model, ids, labels = insp.model, insp.ids, insp.labels
    rows = tl.residual_rows(insp.rec, model.config.n_layer)  # (L+1, T, C)
    pair = compare(model, rows, lens, positions, ids)
    targets = vl.lens_targets(ids, list(positions))
    cols = [labels[p] for p in positions]

    def table(t: LogitLens) -> go.Figure:
        return vl.logit_lens_figure(t.top_ids, t.top_probs, t.layers, cols, insp.token_str, t.target_probs,
                                    targets, width_px=width_px)

    fig_l = table(pair.logit)
    fig_t = None if pair.tuned is None else table(pair.tuned)
    if fig_t is not None:  # half a page each: short titles (the caption says what an outline means)
        fig_l.update_layout(title=dict(text="logit lens: top next-token guess after each block"))
        fig_t.update_layout(title=dict(text="tuned lens: top next-token guess after each block"))
    return LensView(fig_l, fig_t, measures_figure(pair, pair.logit.layers))
