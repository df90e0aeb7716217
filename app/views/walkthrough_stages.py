"""Walkthrough stages: what each stage of the GPT pipeline is, which recordings it needs, its shape,
and its real values for a prompt as figures (heatmap, norms, and the attention stage opened up:
the tensors of gpt.heads.attention_steps).

Pure (no Streamlit): a Recorder filled by `model(idx, rec=rec)` with `stage_names(stage, layer)`,
plus the model's read-only parameters (LayerNorm gain and bias) in; plotly figures out. The page
records only the names of the stage it shows (app.resources.trace).

Stages, in model order (the in-block ones exist once per layer):
  ids → tok_emb, pos_emb → embed → [ln1 → attn → resid_mid → ln2 → mlp → resid_post] × n_layer
  → ln_f → logits
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import plotly.graph_objects as go
import torch

from gpt.config import GPTConfig
from gpt.heads import AttentionSteps
from gpt.record import Recorder


@dataclass(frozen=True)
class Stage:
    """One box of the pipeline. `what` is a format string over C, H, hs, V, B (block), T, L."""

    key: str
    label: str  # the selector's text
    short: str  # the diagram box's text
    in_block: bool
    kind: str  # colour group: embed | norm | attn | mlp | add | out
    what: str


STAGES: dict[str, Stage] = {s.key: s for s in (
    Stage("ids", "Token ids", "ids", False, "embed",
          "The tokenizer turned the prompt into T={T} integers, each in 0…{V1}: this is all the model sees."),
    Stage("tok_emb", "Token embedding (wte)", "wte", False, "embed",
          "Each id picks its row of the token-embedding table wte ({V}×{C}): a learned vector of {C} numbers."),
    Stage("pos_emb", "Position embedding (wpe)", "wpe", False, "embed",
          "Each position 0…{T1} picks its row of wpe ({B}×{C}); it tells the model where a token sits "
          "and is the same for every prompt."),
    Stage("embed", "Embedding sum x = tok + pos", "+", False, "add",
          "Token and position vectors are added: x, the residual stream that every block reads and adds to."),
    Stage("ln1", "LayerNorm 1 (ln_1)", "LN 1", True, "norm",
          "Each position's {C} numbers are shifted to mean 0 and scaled to variance 1, then multiplied "
          "by ln_1's learned gain and shifted by its bias, so attention always gets inputs of a steady size."),
    Stage("attn", "Multi-head self-attention", "attn", True, "attn",
          "{H} heads each turn every position into a query, key and value of {hs} numbers; a position "
          "takes a softmax(q·kᵀ/√{hs})-weighted average of the values of itself and EARLIER positions "
          "(the causal mask hides the future); the heads' outputs are joined and projected back to {C}."),
    Stage("resid_mid", "Residual add after attention", "+", True, "add",
          "The attention output is added to the stream, x = x + attn(ln_1(x)): a block only adds to "
          "what came in, it never overwrites it."),
    Stage("ln2", "LayerNorm 2 (ln_2)", "LN 2", True, "norm",
          "The stream is normalized again per position (mean 0, variance 1, then ln_2's gain and bias) "
          "before the MLP."),
    Stage("mlp", "MLP (GELU)", "MLP", True, "mlp",
          "Every position on its own goes through a two-layer network, {C} → {C4} → GELU → {C}: here "
          "no information moves between positions."),
    Stage("resid_post", "Residual add after the MLP", "+", True, "add",
          "The MLP output is added, x = x + mlp(ln_2(x)): the block's output and the next block's input."),
    Stage("ln_f", "Final LayerNorm (ln_f)", "ln_f", False, "norm",
          "After the last of the {L} blocks the stream is normalized one last time (ln_f)."),
    Stage("logits", "lm_head → logits", "lm_head", False, "out",
          "lm_head scores all {V} tokens at every position by a dot product with each token's embedding "
          "(the weights are tied to wte): the logits, which a softmax turns into next-token probabilities."),
)}
STAGE_KEYS = list(STAGES)
BLOCK_STAGES = [k for k, s in STAGES.items() if s.in_block]
MAX_CELLS = 40_000  # a heatmap keeps at most this many cells (T=256 x C=128 fits; GPT-2 is cut)
MAX_VOCAB_COLUMNS = 64  # logits of a big vocabulary: the tokens with the highest logits only
MAX_ATTN_POSITIONS = 256  # the (T, T) steps of an opened head draw at most this many positions


def sentence(stage: str, config: GPTConfig, T: int) -> str:
    """The stage's one-sentence explanation with this model's numbers filled in."""
    C = config.n_embd
    return STAGES[stage].what.format(C=C, C4=4 * C, H=config.n_head, hs=config.head_dim,
                                     V=config.vocab_size, V1=config.vocab_size - 1, B=config.block_size,
                                     T=T, T1=T - 1, L=config.n_layer)


def stage_names(stage: str, layer: int) -> tuple[str, ...]:
    """Recorder names the detail of `stage` (at `layer`, for in-block stages) reads; () for ids."""
    p = f"blocks.{layer}."
    attn = tuple(p + "attn.hook_" + n for n in ("q", "k", "v", "attn_scores", "pattern", "z"))
    return {"ids": (), "tok_emb": ("hook_embed",), "pos_emb": ("hook_pos_embed",),
            "embed": ("blocks.0.hook_resid_pre",), "ln1": (p + "ln1.hook_normalized",),
            "attn": attn + (p + "hook_attn_out",),
            "resid_mid": (p + "hook_resid_pre", p + "hook_attn_out", p + "hook_resid_mid"),
            "ln2": (p + "ln2.hook_normalized",), "mlp": (p + "mlp.hook_post", p + "hook_mlp_out"),
            "resid_post": (p + "hook_resid_mid", p + "hook_mlp_out", p + "hook_resid_post"),
            "ln_f": ("ln_final.hook_normalized",), "logits": ("logits",)}[stage]


def stage_shapes(config: GPTConfig, T: int) -> dict[str, str]:
    """Each stage's output shape for a prompt of T tokens (batch 1), as the diagram prints it.
    attn and mlp also name their inner tensors."""
    C, H, hs, V = config.n_embd, config.n_head, config.head_dim, config.vocab_size
    x = f"(1, {T}, {C})"
    return {"ids": f"(1, {T})", "tok_emb": x, "pos_emb": f"({T}, {C})", "embed": x, "ln1": x,
            "attn": f"q,k,v<br>(1, {H}, {T}, {hs})<br>→ {x}", "resid_mid": x, "ln2": x,
            "mlp": f"(1, {T}, {4 * C})<br>→ {x}", "resid_post": x, "ln_f": x, "logits": f"(1, {T}, {V})"}


# -- values --------------------------------------------------------------------------------------------
@dataclass
class StageValues:
    """A stage's real values for the prompt (batch element 0).

    values (T, X): the heatmap (X = channels, or vocabulary for logits); norms {name: (T,)}: L2 norms
    per position (one entry, or before / added / after for a residual add); hidden (T, 4C) for the MLP;
    head_norms (T, H) for attention (each head's output z_h)."""

    stage: str
    layer: int
    values: torch.Tensor
    norms: dict[str, torch.Tensor]
    hidden: torch.Tensor | None = None
    head_norms: torch.Tensor | None = None
    shape: tuple[int, ...] = ()


def stage_values(stage: str, layer: int, rec: Recorder, model: torch.nn.Module) -> StageValues:
    """The values of `stage` from `rec` (recorded with stage_names(stage, layer)). Not for "ids".
    LayerNorm stages show the real output: the recorded normalized x times the gain, plus the bias."""
    if stage == "ids" or stage not in STAGES:
        raise ValueError(f"no recorded values for stage {stage!r}")
    names = stage_names(stage, layer)

    def got(i: int) -> torch.Tensor:  # read only what is shown (derived tensors cost work on access)
        return rec[names[i]][0].detach().float()  # batch dim dropped

    hidden = head_norms = None
    if stage in ("resid_mid", "resid_post"):
        before, added, v = got(0), got(1), got(2)
        branch = "+ attn out" if stage == "resid_mid" else "+ MLP out"
        norms = {"before": before.norm(dim=-1), branch: added.norm(dim=-1), "after": v.norm(dim=-1)}
    else:
        v = got(len(names) - 1)
        if stage in ("ln1", "ln2", "ln_f"):
            ln = model.transformer.ln_f if stage == "ln_f" else getattr(model.transformer.h[layer], "ln_" + stage[2])
            v = v * ln.weight.detach().float().cpu() + (0 if ln.bias is None else ln.bias.detach().float().cpu())
        elif stage == "attn":
            head_norms = got(5).norm(dim=-1)  # hook_z (T, H, hs) -> (T, H)
        elif stage == "mlp":
            hidden = got(0)  # hook_post (T, 4C)
        norms = {"‖x‖": v.norm(dim=-1)}
    return StageValues(stage, layer, v, norms, hidden, head_norms, shape=(1, *v.shape))


# -- figures -------------------------------------------------------------------------------------------
# Figures are few and carry several panels each: in the browser every chart costs far more than a
# panel (Streamlit's per-chart work), so a stage draws 1-3 charts. Traces are plain dicts and the
# layout goes in the constructor: plotly validates once (update_layout would cost ~5 ms a figure).
Cell = dict  # {"traces": [...], "title": str, "x": xaxis props, "y": yaxis props, "pad": extra gap before it}
AXIS_FONT = dict(family="monospace", size=10)
PANEL_PX = 800  # about a full-width figure's plot width in a 1280-px window (room for tick labels)


def heat(z: torch.Tensor, x: Sequence[Any] | None, y: Sequence[str], what: str, colorscale: str = "RdBu_r",
         symmetric: bool = True, **kw: Any) -> dict[str, Any]:
    """A heatmap trace of z (rows y); symmetric: colours centred on 0, positive red."""
    z = z.detach().float().cpu()
    if symmetric:
        fin = z[torch.isfinite(z)]
        m = float(fin.abs().max()) if fin.numel() else 1.0
        kw = {"zmid": 0.0, "zmin": -m, "zmax": m, **kw}  # an explicit range (shared by panels) wins
    z = z.masked_fill(~torch.isfinite(z), float("nan"))  # -inf (masked) cells stay blank
    return dict(type="heatmap", z=z.numpy(), x=list(x) if x is not None else None, y=list(y),
                colorscale=colorscale, hovertemplate=f"%{{y}} · %{{x}}<br>{what}=%{{z:.4f}}<extra></extra>", **kw)


def grid_figure(grid: list[list[Cell]], widths: Sequence[float], row_px: int, gap: float = 0.06,
                vgap_px: int = 80) -> go.Figure:
    """Panels on a grid, one plotly figure: grid[r][c] is a Cell, columns `widths` wide (relative),
    `gap` (a fraction of the width: room for a colour bar) apart, plus a cell's "pad" before it
    (room for its own tick labels), rows row_px tall. Panels in a row share the first one's y axis
    (positions line up); heatmaps get a thin colour bar just right of their panel unless the trace
    sets showscale=False."""
    n = len(grid)
    H = n * row_px + (n - 1) * vgap_px
    data, layout, notes, k = [], {}, [], 0
    for r, row in enumerate(grid):
        pads = sum(cell.get("pad", 0.0) for cell in row)
        scale = (1 - gap * (len(widths) - 1) - pads) / sum(widths)  # width units -> fraction of the figure
        y1 = 1 - r * (row_px + vgap_px) / H
        y0, x, first = max(0.0, y1 - row_px / H), 0.0, None
        for c, cell in enumerate(row):
            x += cell.get("pad", 0.0)
            x0, x1 = x, min(1.0, x + widths[c] * scale)
            x = x1 + gap
            k += 1
            sx = "" if k == 1 else str(k)
            for t in cell["traces"]:
                if t["type"] == "heatmap" and t.get("showscale", True):
                    t = {**t, "colorbar": dict(x=x1 + 0.004, xanchor="left", y=(y0 + y1) / 2, len=row_px / H,
                                               thickness=8, tickfont=dict(size=9))}
                data.append({**t, "xaxis": "x" + sx, "yaxis": "y" + sx})
            layout["xaxis" + sx] = {**dict(domain=[x0, x1], anchor="y" + sx, tickfont=AXIS_FONT, showgrid=False),
                                    **cell.get("x", {})}
            yax = dict(domain=[y0, y1], anchor="x" + sx, type="category", autorange="reversed", tickfont=AXIS_FONT,
                       showgrid=False)
            if first is not None:  # line up with the row's first panel
                yax.update(matches=first, showticklabels=False)
            layout["yaxis" + sx] = {**yax, **cell.get("y", {})}
            first = first or "y" + sx
            notes.append(dict(text=f"<b>{cell['title']}</b>", x=x0, y=y1, xref="paper", yref="paper", xanchor="left",
                              yanchor="bottom", yshift=4, showarrow=False, align="left", font=dict(size=12)))
    # the top margin keeps panel titles clear of the mode bar (top right, on hover)
    return go.Figure(data, layout=dict(height=H + 80, margin=dict(l=10, r=40, t=50, b=30), annotations=notes,
                                       showlegend=False, plot_bgcolor="white", **layout))


def heatmap_height(T: int) -> int:
    """Pixels for a heatmap of T position rows."""
    return min(560, max(220, 9 * T + 60))


def cut_columns(z: torch.Tensor, max_cells: int = MAX_CELLS) -> int:
    """How many leading columns of z (T, X) a heatmap keeps within max_cells (at least 8)."""
    return min(z.size(1), max(8, max_cells // max(1, z.size(0))))


def logits_columns(values: torch.Tensor, max_columns: int = MAX_VOCAB_COLUMNS) -> list[int]:
    """Vocabulary ids the logits heatmap shows: all of a small vocabulary (<= 256), else the
    `max_columns` tokens with the highest logit at any position, in id order."""
    V = values.size(1)
    if V <= 256:
        return list(range(V))
    best = values.max(dim=0).values  # (V,)
    return sorted(torch.topk(best, min(max_columns, V)).indices.tolist())


NORM_COLORS = ("#4c78a8", "#f58518", "#e4572e")


def stage_figure(sv: StageValues, rows: Sequence[str], token_str: Callable[[int], str] = str) -> go.Figure:
    """One chart for a stage: its values, position × channel (× vocabulary token for the logits,
    named by token_str), beside each position's L2 norm (before / added / after for a residual add)
    and, for attention, each head's output norm ‖z_h‖, all on the same position rows."""
    v, X = sv.values, sv.values.size(1)
    shape = f"(1, {len(rows)}, {X})"
    if sv.stage == "logits":
        cols = logits_columns(v)
        main = Cell(traces=[heat(v[:, cols], [f"{i}:{token_str(i)}" for i in cols], rows, "logit")],
                    title=f"logits {shape}" + ("" if len(cols) == X else f" — {len(cols)} top tokens shown"),
                    x=dict(type="category", title="token"))
    else:
        main = matrix_cell(v, rows, f"values {shape}, position × channel", "channel")
    names = list(sv.norms)
    one = len(names) == 1
    norms = Cell(traces=[dict(x=n.tolist(), y=list(rows), name=name, marker=dict(color=NORM_COLORS[i]),
                              hovertemplate=f"%{{y}}<br>{name}=%{{x:.3f}}<extra></extra>",
                              **(dict(type="bar", orientation="h") if one else
                                 dict(type="scatter", mode="lines+markers", marker_size=4,
                                      line=dict(width=3 if "after" in name else 1.5))))
                         for i, (name, n) in enumerate(sv.norms.items())],
                 title="‖x‖ per position" if one else " · ".join(
                     f"<span style='color:{NORM_COLORS[i]}'>{name}</span>" for i, name in enumerate(names)),
                 x=dict(rangemode="tozero", title="L2 norm"))
    cells, widths = [main, norms], [3.0, 1.3 if one else 1.7]
    if sv.head_norms is not None:
        H = sv.head_norms.size(1)
        # its own position labels: with many heads it sits far from the first panel's
        pad = min(0.15, (max(map(len, rows), default=1) * 6.2 + 12) / PANEL_PX)
        cells.append(Cell(traces=[heat(sv.head_norms, [f"H{h}" for h in range(H)], rows, "‖z_h‖", "Blues", False)],
                          title="‖z_h‖ per head", x=dict(type="category"), y=dict(showticklabels=True), pad=pad))
        widths.append(0.25 * H + 0.3)
    return grid_figure([cells], widths, heatmap_height(len(rows)))


def matrix_cell(z: torch.Tensor, rows: Sequence[str], title: str, x_title: str) -> Cell:
    """A panel of z (T, X), position × x_title, keeping the leading columns within MAX_CELLS."""
    keep = cut_columns(z)
    return Cell(traces=[heat(z[:, :keep], None, rows, x_title)], x=dict(title=x_title),
                title=title + ("" if keep == z.size(1) else f" — first {keep} shown"))


def hidden_figure(hidden: torch.Tensor, rows: Sequence[str]) -> go.Figure:
    """The MLP's hidden layer GELU(c_fc(x)) (T, 4C), position × hidden unit."""
    title = f"hidden GELU(c_fc(x)) (1, {len(rows)}, {hidden.size(1)})"
    return grid_figure([[matrix_cell(hidden, rows, title, "hidden unit")]], [1.0], heatmap_height(len(rows)))


@dataclass
class Panel:
    """One step of an opened-up stage: a heading, a note (shapes, what happens), its figures."""

    heading: str
    note: str
    figures: list[go.Figure]


def attention_panels(s: AttentionSteps, rows: Sequence[str], n_head: int) -> list[Panel]:
    """The attention stage opened up for one head in two charts, each panel titled with its step
    and shape. Past MAX_ATTN_POSITIONS positions only the last ones are drawn (titles say so)."""
    T, hs = s.q.shape
    W = min(T, MAX_ATTN_POSITIONS)
    w, r = slice(T - W, T), list(rows)[T - W:]  # the drawn window
    cut = "" if W == T else f", last {W}"
    dims = list(range(hs))
    m = float(torch.cat([s.q[w], s.k[w], s.v[w]]).abs().max())
    qkv = grid_figure([[Cell(traces=[heat(t[w], dims, r, n, zmin=-m, zmax=m, showscale=n == "v")],
                             title=f"{n} ({T}, {hs}){cut}", x=dict(title="dim"))
                        for n, t in (("q", s.q), ("k", s.k), ("v", s.v))]], [1, 1, 1], min(420, 6 * W + 120))
    key = dict(title="key", type="category", showticklabels=W <= 48)
    side = min(360, max(220, 5 * W + 80))
    steps = grid_figure([
        [Cell(traces=[heat(s.raw[w, w], r, r, "q·kᵀ/√d")], title=f"② q·kᵀ/√{hs} ({T}, {T}){cut}", x=key),
         Cell(traces=[dict(type="heatmap", z=s.mask[w, w].to(torch.uint8).numpy(), x=r, y=r, zmin=0, zmax=1,
                           colorscale=[[0, "#eeeeee"], [1, "#3b6fb6"]], showscale=False,  # 1 byte a cell
                           hovertemplate="query %{y} · key %{x}<br>allowed=%{z}<extra></extra>")],
              title="③ causal mask: blue = key ≤ query", x=key),
         Cell(traces=[heat(s.scores[w, w], r, r, "masked score")], title="③ masked: future = −∞ (blank)", x=key)],
        [Cell(traces=[heat(s.pattern[w, w], r, r, "weight", "Blues", False, zmin=0.0)],
              title=f"④ softmax per row ({T}, {T})", x=key),
         Cell(traces=[heat(s.v[w], dims, r, "v")], title=f"v ({T}, {hs})", x=dict(title="dim")),
         Cell(traces=[heat(s.z[w], dims, r, "z")], title=f"⑤ z = weights · v ({T}, {hs})", x=dict(title="dim"))],
    ], [1, 1, 1], side, vgap_px=125 if W <= 48 else 80)  # room for the rotated key labels
    return [
        Panel(f"① q, k, v of head {s.head}",
              f"ln_1(x) (1, {T}, {n_head * hs}) · c_attn → q, k, v, each split into {n_head} heads "
              f"(1, {n_head}, {T}, {hs}); head {s.head}'s slices are ({T}, {hs}) each.", [qkv]),
        Panel("② scaled scores q·kᵀ/√d → ③ causal mask → ④ softmax → ⑤ weighted sum",
              f"- ② ({T}, {hs}) · ({hs}, {T}) → ({T}, {T}): how well each query matches each key, divided by "
              f"√{hs} = {math.sqrt(hs):.2f} so the softmax is not too peaked.\n"
              "- ③ a position may only look at itself and earlier ones: scores above the diagonal become −∞, "
              "so their weight is exactly 0.\n"
              f"- ④ each row becomes probabilities ({T}, {T}) that sum to 1: where that position looks.\n"
              f"- ⑤ weights ({T}, {T}) · v ({T}, {hs}) → z ({T}, {hs}); the {n_head} heads' z side by side "
              f"(1, {T}, {n_head * hs}) go through c_proj to the attention output above.",
              [steps]),
    ]
