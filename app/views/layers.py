"""Layer figures: residual-stream norms, the logit lens table, and the embedding views.

Pure functions (no Streamlit): tensors from gpt.analysis in, plotly figures out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import plotly.graph_objects as go
import torch
from torch.nn import functional as F

from app.views.tokens import light_figure
from gpt.analysis import NEEDS, embedding_pca, logit_lens, position_similarity, residual_norms

if TYPE_CHECKING:
    from app.inspection import Inspection

NAMES = tuple(NEEDS["residual_norms"])  # what the page records (covers the logit lens too)
# radio label -> key of gpt.analysis.residual_norms
NORM_CHOICES = {
    "resid pre (block input)": "resid_pre",
    "resid mid (after attention)": "resid_mid",
    "resid post (block output)": "resid_post",
    "attention output": "attn_out",
    "MLP output": "mlp_out",
}
MAX_SIM_SIDE = 256  # the position-similarity matrix is pooled to at most this many cells a side
LENS_PLOT_PX = 640  # about how wide the lens's cells are drawn on a full-width page (1280 px window)
LENS_FONTS = (11, 10, 9)  # cell font sizes (px) to try, largest first, before text is cut
# positions in the lens at once: a character is one glyph, a BPE token several, so fewer fit
LENS_WIDTHS = {"char": 32, "gpt2": 16}
CHAR_EM = 0.62  # a monospace character's width, in font sizes
MATCH = "#e4572e"  # outline of a cell whose guess is the actual next token


def _pos_axis() -> dict:
    return dict(type="category", tickfont=dict(family="monospace", size=10), tickangle=-60)


def norm_figure(norms: dict[str, torch.Tensor], key: str, labels: Sequence[str]) -> go.Figure:
    """Heatmap of one residual-stream quantity's L2 norm, layer (rows) x position (columns).
    `norms` is gpt.analysis.residual_norms(...) ({key: (L, T)}); `key` one of NORM_CHOICES' values."""
    if key not in norms:
        raise ValueError(f"unknown norm {key!r}; choose one of {sorted(norms)}")
    z = norms[key].detach().float().cpu()  # (L, T)
    L, T = z.shape
    if T != len(labels):
        raise ValueError(f"{T} positions but {len(labels)} labels")
    rows = [f"block {i}" for i in range(L)]
    trace = dict(type="heatmap", z=z.numpy(), x=list(labels), y=rows, colorscale="Viridis",
                 colorbar=dict(title=dict(text="‖x‖")),
                 hovertemplate="%{y}<br>position %{x}<br>norm=%{z:.3f}<extra></extra>")
    return light_figure([trace], dict(
        height=max(220, 30 * L + 140), margin=dict(l=10, r=10, t=30, b=10),
        title=dict(text=f"‖{key}‖ by layer and position"), xaxis=_pos_axis(), yaxis=dict(autorange="reversed")))


def fit_label(text: str, max_chars: int) -> str:
    """`text` in at most `max_chars` characters: cut, with "…" as the last one, when longer."""
    if len(text) <= max_chars:
        return text
    return "" if max_chars <= 0 else text[: max_chars - 1] + "…"


def cell_text_size(n_cells: int, width_px: float, longest: int) -> tuple[int, int]:
    """(font size px, characters that fit) for texts of up to `longest` characters in `n_cells`
    cells side by side across `width_px`: the largest of LENS_FONTS where the longest fits, else
    the smallest (longer texts get cut); 0 characters means the cells are too narrow for any text."""
    cell = width_px / max(1, n_cells) - 4  # a little padding inside each cell
    for size in LENS_FONTS:
        chars = max(0, int(cell // (CHAR_EM * size)))
        if chars >= longest:
            break
    return size, chars


def lens_width(tokenizer_kind: str) -> int:
    """How many positions the lens shows at once for a tokenizer of this kind."""
    return LENS_WIDTHS.get(tokenizer_kind, min(LENS_WIDTHS.values()))


def lens_note(model: torch.nn.Module) -> str:
    """The sentence that explains the lens's "embed" row for `model` (tied or not)."""
    tied = getattr(model, "lm_head", None) is not None and \
        model.lm_head.weight is model.transformer.wte.weight
    if tied:
        return ("The **embed** row is the token embedding read through the unembedding: the weights are "
                "tied (lm_head = wteᵀ), so a token's own embedding scores highest against itself and that "
                "row mostly \"predicts\" the input token, often with p≈1. It is no prediction yet.")
    return "The **embed** row is the token and position embedding read through the unembedding, before any block."


def logit_lens_figure(top_ids: torch.Tensor, top_probs: torch.Tensor, rows: Sequence[str],
                      labels: Sequence[str], token_str: Callable[[int], str],
                      target_probs: torch.Tensor | None = None, targets: Sequence[int | None] | None = None,
                      width_px: float = LENS_PLOT_PX) -> go.Figure:
    """The logit-lens table: cell (row, position) shows the top token read off that layer's residual,
    colored by its probability, its text cut (or shrunk) to fit a cell of a `width_px`-wide plot;
    hover lists the top k in full (and p(actual next token) when given). Cells whose top guess is
    the actual next token (`targets[p]`, None where unknown) are outlined.

    top_ids/top_probs (R, P, k) from gpt.analysis.logit_lens; rows: its R row labels; labels: the P
    position labels; token_str: id -> display string (tokenizer.token_str)."""
    R, P, k = top_ids.shape
    if len(rows) != R or len(labels) != P:
        raise ValueError(f"lens is {R} rows x {P} positions; got {len(rows)} row and {len(labels)} position labels")
    if targets is not None and len(targets) != P:
        raise ValueError(f"{len(targets)} targets for {P} positions")
    ids = top_ids.tolist()
    probs = top_probs.detach().float().cpu()
    names = {i: token_str(i) for i in {t for r in ids for p in r for t in p}}  # each id converted once
    size, chars = cell_text_size(P, width_px, max(len(names[r[p][0]]) for r in ids for p in range(P)))
    text, hover, shapes = [], [], []
    for r in range(R):
        text.append([fit_label(names[ids[r][p][0]], chars) for p in range(P)])
        # on a category axis, shapes take the category's index as its coordinate
        shapes += [dict(type="rect", x0=p - 0.5, x1=p + 0.5, y0=r - 0.5, y1=r + 0.5, line=dict(color=MATCH, width=2))
                   for p in range(P) if targets is not None and targets[p] is not None and ids[r][p][0] == targets[p]]
        row_hover = []
        for p in range(P):
            lines = [f"{j + 1}. {names[ids[r][p][j]]!s}  {float(probs[r, p, j]):.3f}" for j in range(k)]
            if target_probs is not None and not torch.isnan(target_probs[r, p]):
                lines.append(f"p(actual next)={float(target_probs[r, p]):.3f}")
            row_hover.append(f"{rows[r]} · {labels[p]}<br>" + "<br>".join(lines))
        hover.append(row_hover)
    trace = dict(type="heatmap", z=probs[..., 0].numpy(), x=list(labels), y=list(rows), colorscale="YlGnBu",
                 zmin=0.0, zmax=1.0, text=text, textfont=dict(family="monospace", size=size),
                 hovertext=hover, hoverinfo="text", colorbar=dict(title=dict(text="p(top)")))
    if chars > 0:
        trace["texttemplate"] = "%{text}"
    title = "logit lens: top next-token guess after each block" + \
        (" (outlined: the actual next token)" if shapes else "")
    return light_figure([trace], dict(
        height=max(240, 30 * R + 150), margin=dict(l=10, r=10, t=30, b=10), shapes=shapes,
        title=dict(text=title), xaxis=_pos_axis(), yaxis=dict(autorange="reversed", type="category")))


def embedding_ids(vocab_size: int, prompt_ids: Sequence[int] = (), max_tokens: int = 500) -> list[int]:
    """Which token ids the PCA scatter shows: all of a small vocabulary; for a BPE vocabulary the
    first `max_tokens` ids plus the prompt's tokens (so they can be found)."""
    if vocab_size <= max_tokens:
        return list(range(vocab_size))
    keep = list(range(max_tokens))
    extra = sorted({int(i) for i in prompt_ids if int(i) >= max_tokens})
    return keep + extra


def embedding_figure(coords: torch.Tensor, ratio: torch.Tensor, ids: Sequence[int],
                     token_str: Callable[[int], str], highlight: Sequence[int] = ()) -> go.Figure:
    """PCA scatter of token embeddings: coords (V, 2) and explained-variance ratio (2,) from
    gpt.analysis.embedding_pca, restricted to `ids`; tokens in `highlight` (the prompt's) in red.
    Labels are drawn on the points when there are few enough to read (<= 120)."""
    sel = torch.as_tensor(list(ids), dtype=torch.long)
    xy = coords[sel].detach().float().cpu()  # (N, 2)
    names = [token_str(int(i)) for i in sel]
    hot = set(int(i) for i in highlight)
    colors = ["#e4572e" if int(i) in hot else "#4c78a8" for i in sel]
    trace = dict(type="scatter", x=xy[:, 0].numpy(), y=xy[:, 1].numpy(),
                 mode="markers+text" if len(names) <= 120 else "markers",
                 text=names, textposition="top center", textfont=dict(family="monospace", size=11),
                 marker=dict(color=colors, size=7), customdata=sel.numpy(),
                 hovertemplate="id %{customdata}: %{text}<br>(%{x:.3f}, %{y:.3f})<extra></extra>")
    r = ratio.tolist()
    return light_figure([trace], dict(
        height=480, margin=dict(l=10, r=10, t=40, b=10),
        title=dict(text=f"token embeddings, PCA ({len(names)} tokens; red = in the prompt)"),
        xaxis=dict(title=dict(text=f"PC1 ({r[0]:.0%} of variance)"), zeroline=False),
        yaxis=dict(title=dict(text=f"PC2 ({r[1]:.0%} of variance)"), zeroline=False)))


def position_similarity_figure(sim: torch.Tensor, max_side: int = MAX_SIM_SIDE) -> go.Figure:
    """Cosine similarity of position embeddings (P, P) as a heatmap; average-pooled to at most
    max_side cells a side (GPT-2's 1024^2 would be a million cells), axes in positions."""
    P = sim.size(0)
    z = sim.detach().float().cpu()
    step = 1
    if P > max_side:
        z = F.adaptive_avg_pool2d(z.view(1, 1, P, P), max_side)[0, 0]  # (S, S)
        step = P / max_side
    axis = [round(i * step) for i in range(z.size(0))]
    trace = dict(type="heatmap", z=z.numpy(), x=axis, y=axis, colorscale="RdBu", zmid=0.0, zmin=-1, zmax=1,
                 hovertemplate="positions %{y} · %{x}<br>cos=%{z:.3f}<extra></extra>")
    return light_figure([trace], dict(
        height=480, margin=dict(l=10, r=10, t=40, b=10),
        title=dict(text="position embeddings: cosine similarity" + (" (pooled)" if step > 1 else "")),
        xaxis=dict(title=dict(text="position")), yaxis=dict(title=dict(text="position"), autorange="reversed")))


def lens_targets(ids: Sequence[int], positions: Sequence[int]) -> list[int | None]:
    """The actual next token after each of `positions` (ids[p + 1]); None after the last token."""
    return [int(ids[p + 1]) if p + 1 < len(ids) else None for p in positions]


def lens_window(T: int, start: int, width: int = 32) -> list[int]:
    """The positions the logit-lens table shows: `width` positions from `start`, kept inside 0..T-1."""
    width = max(1, min(width, T))
    start = max(0, min(start, T - width))
    return list(range(start, start + width))


@dataclass
class LayersView:
    """Everything the Layers page draws."""

    norm: go.Figure
    lens: go.Figure | None  # None when built with_lens=False (the page draws both lenses via app.views.lens)
    embeddings: go.Figure
    positions: go.Figure


ModelViews = tuple[torch.Tensor, torch.Tensor, go.Figure]  # PCA coords (V, 2), explained ratio (2,), figure


def build(insp: "Inspection", norm_key: str, lens_positions: Sequence[int], per_model: ModelViews,
          with_lens: bool = True) -> LayersView:
    """All of the page's figures from an Inspection recording NAMES (which covers the logit lens),
    and `per_model`, model_views() of its model (app.resources caches it: it does not depend on the
    prompt). One function, so the page and bench/bench_pages.py time the same work. with_lens=False
    leaves the logit-lens table out (the page builds it beside the tuned lens, app.views.lens)."""
    model, ids, labels = insp.model, insp.ids, insp.labels
    norms = residual_norms(insp.rec, model.config.n_layer)
    lens = logit_lens(model, insp.rec, k=5, positions=list(lens_positions), ids=ids) if with_lens else None
    coords, ratio, positions = per_model
    shown = embedding_ids(model.config.vocab_size, ids)
    return LayersView(
        norm=norm_figure(norms, norm_key, labels),
        lens=None if lens is None else logit_lens_figure(
            lens.top_ids, lens.top_probs, lens.layers, [labels[p] for p in lens.positions], insp.token_str,
            lens.target_probs, lens_targets(ids, lens.positions)),
        embeddings=embedding_figure(coords, ratio, shown, insp.token_str, highlight=ids),
        positions=positions,
    )


def model_views(model: torch.nn.Module) -> ModelViews:
    """(embedding PCA coords, explained ratio, position-similarity figure) of `model`: they depend
    on its weights only. Uncached here: app.resources.model_views keeps one per checkpoint."""
    coords, ratio = embedding_pca(model)
    return coords, ratio, position_similarity_figure(position_similarity(model))
