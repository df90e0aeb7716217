"""Compare page figures: two sides, A and B (each an Inspection: a checkpoint, a prompt, its
recording, the edit it ran under), side by side, with their differences.

Pure functions (no Streamlit); the maths is gpt.compare's, whose Comparable decides what is
differenced and says what is skipped and why. Every difference is B − A. One builder per tab of the
page (build_attention, build_lens, build_next, build_scores, build_dla), so the page computes only
the open tab and bench/bench_compare.py times the same work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import plotly.graph_objects as go
import torch

from app.views import attribution as vattr
from app.views.attention import pattern_figure
from app.views.heads import SCORES, head_id
from app.views.layers import fit_label, lens_targets, logit_lens_figure
from app.views.tokens import distribution_at, distribution_figure, light_figure
from gpt import attribution, compare
from gpt.analysis import NEEDS, logit_lens

if TYPE_CHECKING:
    from app.inspection import Inspection, Loaded
    from gpt.edit import Edits

NAMES = ("blocks.*.attn.hook_pattern", *NEEDS["logit_lens"], "logits")  # every tab but DLA
DLA_NAMES = tuple(attribution.NEEDS)  # the DLA tab (it holds the logits too)
TABS = ("Attention", "Logit lens", "Next token", "Head scores", "Attribution (DLA)")
TWO_CHECKPOINTS, TWO_PROMPTS = "Two checkpoints", "One model, two prompts"
A_COLOR, B_COLOR, KL_COLOR = "#4c78a8", "#e4572e", "#7f3c8d"
TICK = dict(family="monospace", size=10)
SCORE_WHERE = {"prompt": "Measured on each side's prompt, over query positions 1…T-1.",
               "induction": "Induction is measured per checkpoint on a random sequence repeated twice, not on the prompt."}


def second_prompt(tokenizer_kind: str) -> str:
    """The first text of the page's "Prompt B": the default prompt with one word near its end
    changed (near the end, so it survives keeping the last block of a small model's context)."""
    return "The quick brown cat" if tokenizer_kind == "gpt2" else "ROMEO:\nBut soft, what light through yonder door breaks?"


def names_for(tab: str | None) -> tuple[str, ...]:
    """What each side records for the open tab (one forward per side; the DLA tab needs head outputs)."""
    return DLA_NAMES if tab == TABS[-1] else NAMES


# -- choosing the two sides ---------------------------------------------------------------------------
def choices(current: tuple[str, str] | None, runs: Sequence[tuple[str, Sequence[tuple[int, str]]]],
            entries: Sequence[tuple[str, str]]) -> dict[str, str]:
    """ref -> label of every checkpoint the page offers, each once: the current model first (which
    may be an upload or a path), then each run's snapshots oldest first ("<run> · iter N"), then the
    catalog's other entries (the bundled model, runs' latest and best). current: (ref, label);
    runs: (run name, [(iter, ref)]); entries: (ref, label)."""
    out: dict[str, str] = {}
    if current is not None:
        out[current[0]] = f"{current[1]} (current model)"
    for name, snaps in runs:
        for it, ref in snaps:
            out.setdefault(str(ref), f"{name} · iter {it}")
    for ref, label in entries:
        out.setdefault(str(ref), label)
    return out


def default_pair(snapshots: Sequence[tuple[int, str]]) -> tuple[str, str] | None:
    """The first and the last snapshot of the current model's run; None with fewer than two (the
    page then compares the current model on two prompts)."""
    return (str(snapshots[0][1]), str(snapshots[-1][1])) if len(snapshots) >= 2 else None


def side_edits(edit: "Edits | None", current: "Loaded", a: "Loaded", b: "Loaded"
               ) -> tuple["Edits | None", "Edits | None", str | None]:
    """The sidebar's edit on each side, and the sentence that says where it applies. It was made for
    the current model (its layers and heads; a mean ablation's reference ids are in its tokenizer),
    so it applies to a side whose model has the current one's shape and tokenizer, and no other."""
    if not edit:
        return None, None, None
    cfg = current.config

    def fits(x: "Loaded") -> bool:
        c = x.config
        return (c.n_layer, c.n_head, c.n_embd) == (cfg.n_layer, cfg.n_head, cfg.n_embd) and x.tokenizer == current.tokenizer

    fa, fb = fits(a), fits(b)
    where = {(True, True): "both sides", (True, False): "side A only", (False, True): "side B only",
             (False, False): "neither side"}[(fa, fb)]
    why = "" if fa and fb else (f" It was made for the current model ({cfg.n_layer}x{cfg.n_head}, n_embd {cfg.n_embd}, "
                                f"{current.tokenizer.kind} tokenizer); a side of another shape or tokenizer runs unedited.")
    return (edit if fa else None), (edit if fb else None), f"The sidebar edit ({edit.description}) applies to {where}.{why}"


def comparison(a: "Inspection", b: "Inspection") -> compare.Comparable:
    """gpt.compare.comparable of the two sides (their tokenizers, configs and token strings)."""
    return compare.comparable(a.loaded.tokenizer, b.loaded.tokenizer, a.config, b.config, a.strs, b.strs)


def pair_labels(a: "Inspection", b: "Inspection", n: int) -> list[str]:
    """Axis labels of the first n positions: A's ("3:·b") where both sides show the same tokens,
    else both tokens ("3:·b|·c", two prompts)."""
    if a.strs[:n] == b.strs[:n]:
        return a.labels[:n]
    return [f"{t}:{x}|{y}" for t, (x, y) in enumerate(zip(a.strs[:n], b.strs[:n]))]


def _titled(fig: go.Figure, title: str) -> go.Figure:
    fig.layout.title = dict(text=title)
    return fig


# -- generic figures ----------------------------------------------------------------------------------
def diff_figure(z: torch.Tensor, x: Sequence[str], y: Sequence[str], title: str, zname: str, xtitle: str,
                ytitle: str, text: Sequence[Sequence[str]] | None = None, height: int | None = None,
                floor: float = 0.05) -> go.Figure:
    """A B − A heatmap (R, C): red where B is higher, blue where lower, white at 0, the colour range
    symmetric around 0 and reaching at least ±`floor` (tiny differences stay pale); NaN cells blank.
    `text`: optional words drawn in the cells."""
    z = z.detach().float().cpu()
    finite = z[torch.isfinite(z)]
    m = max(float(finite.abs().max()) if finite.numel() else 0.0, floor)
    trace: dict[str, Any] = dict(type="heatmap", z=z.numpy(), x=list(x), y=list(y), colorscale=vattr.DIVERGING,
                                 zmid=0.0, zmin=-m, zmax=m, colorbar=dict(title=dict(text=zname)),
                                 hovertemplate=f"{ytitle} %{{y}}<br>{xtitle} %{{x}}<br>{zname}=%{{z:+.4f}}<extra></extra>")
    if text is not None:
        trace.update(text=[list(r) for r in text], texttemplate="%{text}", textfont=dict(family="monospace", size=10))
    R = z.size(0)
    return light_figure([trace], dict(
        title=dict(text=title), height=height or min(720, max(320, 14 * R + 120)), margin=dict(l=10, r=10, t=40, b=40),
        xaxis=dict(type="category", title=dict(text=xtitle), tickfont=TICK, tickangle=-60, showgrid=False),
        yaxis=dict(type="category", title=dict(text=ytitle), autorange="reversed", tickfont=TICK, showgrid=False)))


def grid_figure(z: torch.Tensor, title: str, zname: str, zmin: float | None = None, zmax: float | None = None,
                selected: tuple[int, int] | None = None, colorscale: Any = "Blues", floor: float = 0.05) -> go.Figure:
    """A (layers, heads) grid with each value written in its cell; `selected` outlined. Without
    zmin/zmax it draws a difference: diverging around 0, symmetric, reaching at least ±`floor`, so
    differences too small to matter stay pale instead of filling the scale."""
    z = z.detach().float().cpu()
    L, H = z.shape
    fmt = "%{z:.2f}"
    if zmin is None or zmax is None:
        m = max(float(z.abs().max()), floor)
        zmin, zmax, colorscale, fmt = -m, m, vattr.DIVERGING, "%{z:+.3f}"
    trace = dict(type="heatmap", z=z.numpy(), x=[f"H{h}" for h in range(H)], y=[f"L{l}" for l in range(L)],
                 colorscale=colorscale, zmin=zmin, zmax=zmax, texttemplate=fmt, colorbar=dict(title=dict(text=zname)),
                 hovertemplate="%{y}%{x}<br>" + zname + "=%{z:.4f}<extra></extra>")
    shapes = [] if selected is None else [dict(type="rect", x0=selected[1] - 0.5, x1=selected[1] + 0.5, y0=selected[0] - 0.5,
                                               y1=selected[0] + 0.5, line=dict(color="#111", width=3))]
    return light_figure([trace], dict(title=dict(text=title), height=max(220, 40 * L + 100), shapes=shapes,
                                      margin=dict(l=10, r=10, t=40, b=10), yaxis=dict(autorange="reversed")))


# -- the summary above the tabs -------------------------------------------------------------------------
def summary(a: "Inspection", b: "Inspection", comp: compare.Comparable) -> list[tuple]:
    """components.metric_row cells: each side's mean loss on the prompt (over the compared positions
    when they line up, with B − A), the mean KL(A ‖ B) of the next-token distributions, and how many
    positions are compared."""
    la = compare.loss_per_position(a.rec["logits"], a.ids)  # (Ta-1,)
    lb = compare.loss_per_position(b.rec["logits"], b.ids)  # (Tb-1,)
    if comp.n >= 2:
        la, lb = la[: comp.n - 1], lb[: comp.n - 1]  # positions 0..n-2 predict tokens inside the compared prefix
    ma = float(la.mean()) if la.numel() else None
    mb = float(lb.mean()) if lb.numel() else None
    fmt = (lambda v: "—" if v is None else f"{v:.3f} nats")
    delta = {"delta": f"{mb - ma:+.3f} nats (B − A)", "delta_color": "inverse"} if comp.n >= 2 and ma is not None else {}
    kl = float(compare.kl_per_position(a.rec["logits"], b.rec["logits"], comp.n).mean()) if comp.kl else None
    return [("Loss A", fmt(ma), {"help": "mean cross-entropy of each next token of the prompt"}),
            ("Loss B", fmt(mb), delta),
            ("Mean KL(A ‖ B)", fmt(kl), {"help": "over the compared positions: how much worse B's next-token "
                                         "distribution codes what A expects (0 = the same distributions)"}),
            ("Positions compared", f"{comp.n} of {a.T} / {b.T}")]


# -- the tabs ------------------------------------------------------------------------------------------
@dataclass
class PairView:
    """One tab's figures: side A's, side B's, their difference (None when it is not defined: the
    reason is in Comparable.skipped), an extra figure, and a caption saying how to read them."""

    a: go.Figure
    b: go.Figure
    diff: go.Figure | None
    caption: str
    extra: go.Figure | None = None


def build_attention(a: "Inspection", b: "Inspection", comp: compare.Comparable) -> PairView:
    """The head (a.layer, a.head) on both sides, its B − A pattern, and (same shape) how differently
    every head attends: the total-variation distance per query, averaged (gpt.compare.pattern_distance)."""
    L, h, n = a.layer, a.head, comp.n
    pa = a.rec[f"blocks.{L}.attn.hook_pattern"][0, h].float()  # (Ta, Ta)
    pb = b.rec[f"blocks.{b.layer}.attn.hook_pattern"][0, b.head].float()  # (Tb, Tb)
    name = f"L{L}H{h}"
    diff = extra = None
    caption = "Rows are queries, columns keys; each row sums to 1."
    if n:
        labels = pair_labels(a, b, n)
        diff = diff_figure(compare.pattern_diff(pa, pb, n), labels, labels, f"B − A · {name} pattern", "Δweight",
                           "key", "query")
        caption += (f" {name} attends differently by {float(compare.pattern_distance(pa, pb, n)):.3f} (total-variation "
                    "distance of each query's weights, averaged: 0 = the same weights, 1 = disjoint keys).")
    if n and comp.same_heads:
        dist = torch.stack([compare.pattern_distance(a.rec[f"blocks.{i}.attn.hook_pattern"][0],
                                                     b.rec[f"blocks.{i}.attn.hook_pattern"][0], n)
                            for i in range(a.config.n_layer)])  # (L, H), one layer of patterns at a time
        extra = grid_figure(dist, "How differently each head attends (B vs A)", "distance", 0.0, 1.0, (L, h), "Oranges")
    return PairView(pattern_figure(pa, a.labels, f"A · {name} pattern"), pattern_figure(pb, b.labels, f"B · {name} pattern"),
                    diff, caption, extra)


def build_lens(a: "Inspection", b: "Inspection", comp: compare.Comparable, positions: Sequence[int]) -> PairView:
    """The logit lens of both sides at `positions` (inside both prompts), and, where rows and
    positions line up, B − A of each cell's probability of the actual next token, with B's top
    guess written where it differs from A's."""
    pos = list(positions)
    lenses = [logit_lens(s.model, s.rec, k=5, positions=pos, ids=s.ids) for s in (a, b)]
    figs = [_titled(logit_lens_figure(ln.top_ids, ln.top_probs, ln.layers, [s.labels[p] for p in pos], s.token_str,
                                      ln.target_probs, lens_targets(s.ids, pos)), f"{tag} · logit lens: top guess after each block")
            for tag, s, ln in (("A", a, lenses[0]), ("B", b, lenses[1]))]
    if not comp.lens:
        return PairView(*figs, None, "Each side's own lens (see above for why they are not differenced).")
    la, lb = lenses
    tops = [[[s.token_str(int(i)) for i in row[:, 0]] for row in ln.top_ids] for s, ln in ((a, la), (b, lb))]  # (R, P) strings
    agree = compare.top1_agreement(*tops)  # (R, P)
    text = [[("" if agree[r, p] else fit_label(tops[1][r][p], 4)) for p in range(len(pos))] for r in range(len(la.layers))]
    labels = [pair_labels(a, b, comp.n)[p] for p in pos]
    diff = diff_figure(lb.target_probs - la.target_probs, labels, la.layers,
                       "B − A · p(actual next token); text: B's top guess where it differs from A's",
                       "Δp", "position", "layer", text, height=max(240, 30 * len(la.layers) + 150))
    caption = (f"The top guesses agree in {float(agree.float().mean()):.0%} of these cells, and in "
               f"{float(agree[-1].float().mean()):.0%} of the last row's (the models' own predictions).")
    return PairView(*figs, diff, caption)


def build_next(a: "Inspection", b: "Inspection", comp: compare.Comparable, pos: int, k: int = 10) -> PairView:
    """Both sides' top-k next-token distributions after position `pos`, and per position the
    KL(A ‖ B) (one vocabulary) and each side's loss on its actual next token."""
    figs = []
    for tag, s in (("A", a), ("B", b)):
        p = min(pos, s.T - 1)
        ids, probs, actual = distribution_at(s.rec["logits"], s.ids, p, 1.0, k)
        figs.append(distribution_figure([s.token_str(i) for i in ids], probs, actual, title=f"{tag} · after {s.labels[p]}",
                                        highlight_label="actual next"))
    n = comp.n
    if not n:
        return PairView(*figs, None, "Positions do not line up, so nothing is compared per position (see above).")
    x = pair_labels(a, b, n)
    traces: list[dict[str, Any]] = []
    if comp.kl:
        kl = compare.kl_per_position(a.rec["logits"], b.rec["logits"], n)  # (n,)
        traces.append(dict(type="bar", x=x, y=kl.tolist(), name="KL(A ‖ B)", marker=dict(color=KL_COLOR),
                           hovertemplate="after %{x}<br>KL=%{y:.4f} nats<extra></extra>"))
    for tag, s, color in (("A", a, A_COLOR), ("B", b, B_COLOR)):
        loss = compare.loss_per_position(s.rec["logits"], s.ids)[: n - 1]  # position t predicts token t+1
        traces.append(dict(type="scatter", mode="lines+markers", x=x[: n - 1], y=loss.tolist(), name=f"loss {tag}",
                           yaxis="y2", line=dict(color=color), hovertemplate="after %{x}<br>loss=%{y:.3f} nats<extra>" + tag + "</extra>"))
    fig = light_figure(traces, dict(
        title=dict(text="Per position: KL(A ‖ B) of the next-token distributions, and each side's loss"), height=450,
        margin=dict(l=10, r=10, t=70, b=10), legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0),
        xaxis=dict(type="category", tickfont=TICK, tickangle=-60, anchor="y2"),
        yaxis=dict(domain=[0.58, 1.0], title=dict(text="KL (nats)"), rangemode="tozero"),
        yaxis2=dict(domain=[0.0, 0.48], title=dict(text="loss (nats)"), rangemode="tozero")))
    return PairView(*figs, fig, "Position t's distribution predicts token t+1; the loss is −log p of the actual one. "
                                "KL(A ‖ B) is how much worse B's distribution codes what A expects (0: the same).")


def build_scores(a: "Inspection", b: "Inspection", sa: dict[str, torch.Tensor], sb: dict[str, torch.Tensor], key: str,
                 comp: compare.Comparable) -> PairView:
    """Score `key` of every head on both sides ({key: (L, H)}, as resources.compare_scores gives) and
    B − A when the shapes match, with the largest changes named; the open head (a.layer, a.head) outlined."""
    za, zb, sel = sa[key], sb[key], (a.layer, a.head)
    top = max(float(za.max()), float(zb.max()), 1.0) if key == "entropy" else 1.0
    figs = [grid_figure(z, f"{tag} · {SCORES[key]}", SCORES[key], 0.0, top, sel) for tag, z in (("A", za), ("B", zb))]
    how = SCORE_WHERE["induction" if key == "induction" else "prompt"]
    if key != "induction" and min(a.T, b.T) < 2:
        how += " A one-token prompt has no such query: these are placeholders (0, or 1 for the first token)."
    if key == "induction" and (a.edit or b.edit):
        how += " It is the unedited checkpoint's: the sidebar edit is not applied to it."
    if key == "induction" and (a.loaded.ref, a.loaded.stamp) == (b.loaded.ref, b.loaded.stamp):
        how += " One checkpoint on both sides: the same scores, whatever the prompts."
    if not comp.same_heads:
        return PairView(*figs, None, how)
    d = compare.difference(za, zb, "head scores")
    moved = ", ".join(f"{head_id(l, h)} {v:+.3f}" for l, h, v in compare.largest_changes(d, 3))
    return PairView(*figs, grid_figure(d, f"B − A · {SCORES[key]}", "Δ", selected=sel, floor=0.25 if key == "entropy" else 0.05),
                    f"Largest changes (B − A): {moved}. {how}")


def dla_tokens(a: "Inspection", b: "Inspection", comp: compare.Comparable, pos: int) -> dict[int, str]:
    """token id -> label of the tokens one attribution can follow on both sides at `pos` (one
    vocabulary): A's and B's top guesses, then the actual next token. {} with two vocabularies."""
    if not comp.same_vocab:
        return {}
    out: dict[int, str] = {}
    tops = [int(s.rec["logits"][0, min(pos, s.T - 1)].argmax()) for s in (a, b)]
    for tag, top in zip(("A", "B"), tops):
        out.setdefault(top, f"{vattr.quoted(a.token_str(top))} (top guess of {'A and B' if tops[0] == tops[1] else tag})")
    p = min(pos, a.T - 1)
    if p + 1 < a.T:
        out.setdefault(int(a.ids[p + 1]), f"{vattr.quoted(a.strs[p + 1])} (actual next token of A)")
    return out


def build_dla(a: "Inspection", b: "Inspection", comp: compare.Comparable, pos: int, token: int | None) -> PairView:
    """Direct logit attribution at `pos` on both sides (from recordings of DLA_NAMES, under each
    side's edit): of `token` on both, or, with two vocabularies (token None), of each side's own
    top guess; B − A of the head terms when the shapes match and one token is followed."""
    figs, grids, logits = [], [], []
    for tag, s in (("A", a), ("B", b)):
        p = min(pos, s.T - 1)
        tok = token if token is not None else int(s.rec["logits"][0, p].argmax())
        d = attribution.dla(s.model, s.ids, p, tok, edit=s.edit, rec=s.rec)
        labels = [vattr.component_label(c, s.strs[p], p) for c in d.components]
        figs.append(vattr.bars_figure(d, labels, f"{tag} · terms of logit {vattr.quoted(s.token_str(tok))} at {s.labels[p]}"))
        grids.append(d.heads(s.config.n_layer, s.config.n_head))
        logits.append(d.logit)
    caption = (f"The terms sum to each side's logit: A {logits[0]:.3f}, B {logits[1]:.3f}."
               + (" Two vocabularies: each side attributes its own top guess." if token is None else ""))
    if token is None or not comp.same_heads:
        return PairView(*figs, None, caption)
    d = compare.difference(grids[0], grids[1], "head terms")
    moved = ", ".join(f"{head_id(l, h)} {v:+.3f}" for l, h, v in compare.largest_changes(d, 3))
    return PairView(*figs, grid_figure(d, "B − A · head terms", "Δterm", floor=0.1),
                    f"{caption} Largest changes (B − A): {moved}.")
