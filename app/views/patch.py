"""Patch page figures: a sweep's result as a clickable heatmap, and the next-token distributions.

A plotly scatter of square markers, not go.Heatmap: heatmap clicks never reach Python
(streamlit #8760), scatter points do (st.plotly_chart(on_select=...)). Each point carries its cell
and raw metric in customdata, so `cell_pick` needs no geometry. Pure: no Streamlit.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import plotly.graph_objects as go
import torch

from app.views.events import last_selected
from app.views.tokens import distribution_figure, light_figure

SITE_LABELS = {"resid_pre": "residual stream (before each block)", "attn_out": "attention output",
               "mlp_out": "MLP output", "head": "one head, all positions", "head_pos": "one head at one position"}
# normalized values: below 0 red, 0 grey, 1 (and above) blue; explicit, since plotly.py's and
# plotly.js's "RdBu" run in opposite directions, and the caption names these colours
SCALE = [[0.0, "rgb(178,10,28)"], [0.5, "rgb(200,200,200)"], [1.0, "rgb(5,10,172)"]]
DIRECTIONS = {"denoise": "denoise: clean into corrupted", "noise": "noise: corrupted into clean"}
ANSWERS_READ = {"logit_diff": (True, True), "prob": (True, False), "loss": (False, False)}  # (clean, corrupted)


SAME_PROMPTS = ("The two prompts are the same: change a token of the corrupted one (Swap does it) to ask which "
                "activations carry the difference.")


def answer_help(top: str) -> str:
    """The answer box's help: its default, and how to type a whitespace token."""
    return f"Default: the model's top next token, {top}. Type · for a space, ⏎ for a newline."


def metric_label(metric: str, answers: Sequence[str]) -> str:
    """What the metric measures, in words, with the (clean, corrupted) answer texts it reads."""
    a, b = (repr(x) for x in answers)
    return {"logit_diff": f"logit({a}) − logit({b})", "prob": f"p({a})",
            "loss": "loss of the clean prompt's next tokens (lower is better)"}[metric]


def remember_typed(typed: dict, label: str, prompt: Any, text: str, top: str) -> None:
    """Keep typed[label] = (prompt, text) while the user's answer for `prompt` differs from the top
    next token `top`; forget it when they go back to the top token. One per label: a new prompt's
    answer box starts at its own top token, and the typed one comes back with its prompt."""
    if text != top:
        typed[label] = (prompt, text)
    elif typed.get(label, (None,))[0] == prompt:
        del typed[label]


def caption(metric: str, direction: str, answers: Sequence[str], clean: float, corrupt: float,
            source: str | None = None) -> str:
    """What a cell of the heatmap is and what its colour means, for this metric and direction.
    source: the label of the checkpoint the patched-in activations come from (None: the model)."""
    what = metric_label(metric, answers)
    frm = f" of {source}" if source else ""
    if direction == "denoise":
        cell = f"the corrupted prompt, with this one activation taken from the clean run{frm}"
        colour = ("1 (blue) = patching it restores the clean run's value, 0 (grey) = it leaves the corrupted "
                  "run's, below 0 (red) = it moves further from the clean run")
    else:
        cell = f"the clean prompt, with this one activation taken from the corrupted run{frm}"
        colour = ("1 (blue) = patching it changes nothing (the clean run's value), 0 (grey) = it alone drops "
                  "to the corrupted run's: the clean answer needs this activation, below 0 (red) = past it")
    return (f"Metric: {what}; clean run {clean:.4g}, corrupted run {corrupt:.4g}. Each cell runs {cell}. "
            f"Colour = normalized (value − corrupted) / (clean − corrupted): {colour}. "
            "Hover for the raw metric; click a cell for its next-token distribution.")


def grid(values: torch.Tensor, dims: Sequence[str]) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """values [L, X] or [L, H, T] as rows x columns (head_pos: rows are (layer, head)), with the cell
    index of every entry in row-major order."""
    if len(dims) == 3:  # [L, H, T] -> [L*H, T]: one row per head
        L, H, T = values.shape
        return values.reshape(L * H, T), [(l, h, t) for l in range(L) for h in range(H) for t in range(T)]
    R, C = values.shape
    return values, [(r, c) for r in range(R) for c in range(C)]


def heatmap_figure(normalized: torch.Tensor, raw: torch.Tensor, dims: Sequence[str], col_labels: Sequence[str],
                   metric: str) -> go.Figure:
    """The sweep as squares: color = normalized (0 corrupted .. 1 clean), hover = cell and raw metric.
    col_labels name the columns (token labels for positions, "H0".. for heads)."""
    z, cells = grid(normalized, dims)
    r, _ = grid(raw, dims)
    R, C = z.shape
    rows = [f"L{c[0]}H{c[1]}" for c in cells[::C]] if len(dims) == 3 else [f"L{i}" for i in range(R)]
    xs = [col_labels[c] for _ in range(R) for c in range(C)]
    ys = [rows[i] for i in range(R) for _ in range(C)]
    custom = [[*cell, float(v)] for cell, v in zip(cells, r.reshape(-1).tolist())]
    side = max(8, min(40, 560 // max(R, C)))
    scatter = dict(type="scatter", mode="markers", x=xs, y=ys, customdata=custom, unselected=dict(marker=dict(opacity=1)),
                   marker=dict(symbol="square", size=side, color=z.reshape(-1).tolist(), colorscale=SCALE,
                               cmid=0.0, colorbar=dict(title="normalized"), line=dict(width=0)),
                   hovertemplate=f"%{{y}} · %{{x}}<br>normalized %{{marker.color:.3f}}<br>{metric} "
                                 f"%{{customdata[{len(dims)}]:.4f}}<extra></extra>")
    layout = dict(height=max(220, side * R + 120), margin=dict(l=10, r=10, t=30, b=10), clickmode="event+select",
                  xaxis=dict(type="category", title=dims[-1]), dragmode=False,
                  yaxis=dict(type="category", autorange="reversed", title="layer" if len(dims) == 2 else "layer.head"))
    return light_figure([scatter], layout)


def cell_pick(event: Any, shape: Sequence[int]) -> tuple[int, ...] | None:
    """The cell (as sweep values are indexed) the user clicked, from st.plotly_chart's selection
    event; None when nothing (valid) is selected."""
    item = last_selected(event, "points")
    data = item.get("customdata") if isinstance(item, dict) else None
    if not isinstance(data, (list, tuple)) or len(data) < len(shape) + 1:
        return None
    try:
        cell = tuple(int(c) for c in data[:len(shape)])
    except (TypeError, ValueError):
        return None
    return cell if all(0 <= c < n for c, n in zip(cell, shape)) else None


def top_next(logits: torch.Tensor, token_str: Callable[[int], str], k: int = 8, title: str = "") -> go.Figure:
    """The top-k next-token distribution after the last position of logits (T, V); token_str: an id's
    visible text (the tokenizer's, with · for a space)."""
    p = torch.softmax(logits[-1].float(), dim=-1)
    top = torch.topk(p, min(k, p.numel()))
    return distribution_figure([token_str(int(i)) for i in top.indices], top.values.tolist(), 0, title, "top")
