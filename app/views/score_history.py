"""Timeline 2.0's figures: every head's score over training from the analysis job (one line per
head, the top movers in colour and labelled, the others faint), the phase-change markers drawn on
the chart as bands with their sentences, and a head's top validation examples with its attention
drawn over the text.

Pure (no Streamlit, no caches): a gpt.score_history.ScoreHistory, markers (gpt.phase) and tensors
in; Altair charts, frames, HTML and sentences out. The widgets are app/head_history.py's. A click
on a line is read with app.views.timeline.chart_pick (the same selection PICK_PARAM on "head" as
the per-snapshot chart), so both charts open a head the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import altair as alt
import pandas as pd
import torch

from app.views.heads import head_id
from app.views.timeline import PICK_PARAM
from app.views.tokens import attention_html, attention_legend_html, esc
from gpt import phase
from gpt.head_examples import focus_query, query_terms

# the analysis job's score names (gpt.score_history) -> label, in display order
SCORES: dict[str, str] = {
    "induction_random": "induction (random repeats)",
    "induction_natural": "induction (natural repeats)",
    "prev_token": "previous-token",
    "sink": "first-token (sink)",
    "self": "self",
    "entropy": "entropy (bits)",
}
HELP: dict[str, str] = {
    "induction_random": "on random tokens repeated twice, the mean weight on the token after the "
                        "previous occurrence of the current token",
    "induction_natural": "on validation text, the weight on tokens that follow an earlier occurrence of "
                         "the current token",
    "prev_token": "the mean attention weight on the previous token",
    "sink": "the mean attention weight on the window's first token (an attention sink)",
    "self": "the mean attention weight on the query's own token",
    "entropy": "the mean entropy of the head's attention in bits: low = focused, high = spread out",
}
MOVERS = 4  # heads highlighted and labelled on the chart
MASS_TOP = 0.25  # the least top of the y axis for a 0..1 score
LABEL_GAP = 0.055  # the least distance between two head names at the line ends, as a fraction of the axis
GREY = "#b9b9b9"
# the named heads' colours: category10 without its orange and red, which the marker bands use
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#8c564b", "#e377c2")
BAND = {"score": "#f28e2b", "loss": "#e15759"}  # marker bands: a score jump, a loss bump


def score_options(names: Sequence[str]) -> list[str]:
    """The scores a history holds, in display order (unknown names last, as they are)."""
    return [k for k in SCORES if k in names] + [k for k in names if k not in SCORES]


def label(score: str) -> str:
    return SCORES.get(score, score)


def positions(iters: Sequence[int], at: Sequence[float]) -> list[float]:
    """Where iterations `at` fall on the chart's x axis, whose snapshots stand evenly spaced at
    0, 1, ..., S-1 (like the slider): linear between the two snapshots around each, clamped."""
    out = []
    for x in at:
        if x <= iters[0] or len(iters) == 1:
            out.append(0.0)
        elif x >= iters[-1]:
            out.append(float(len(iters) - 1))
        else:
            i = next(k for k in range(1, len(iters)) if iters[k] >= x)
            out.append(i - 1 + (x - iters[i - 1]) / (iters[i] - iters[i - 1]))
    return out


# -- markers ----------------------------------------------------------------------------------------
@dataclass
class Markers:
    """What the chart marks for one score: `shown` (the score's jump when it reaches its threshold,
    then the loss bumps), and `note` (the sentence saying no head's score moved enough, or "")."""
    shown: list[phase.Marker]
    note: str


def markers_for(iters: Sequence[int], values: torch.Tensor, score: str,
                loss_series: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
                most_bumps: int = 3) -> Markers:
    """The phase-change markers of `score` (values (S, L, H) at `iters`) and the run's loss bumps
    (trainers.metrics series; the `most_bumps` largest changes, in iteration order)."""
    jump = phase.score_marker(iters, values, score)
    bumps = phase.metric_bumps(loss_series or {})
    bumps = sorted(sorted(bumps, key=lambda m: -abs(m.change))[:most_bumps], key=lambda m: m.start)
    return Markers(([jump] if jump else []) + bumps, "" if jump else phase.quiet_note(iters, values, score))


def marker_lines(markers: Markers) -> list[str]:
    """The sentences under the chart: one per marker, what kind it is first."""
    kind = {"score": ":orange[**Phase change:**]", "loss": ":red[**Loss bump:**]"}  # the bands' colours
    return [f"{kind[m.kind]} {m.text}." for m in markers.shown] + ([markers.note] if markers.note else [])


def marker_frame(markers: Sequence[phase.Marker], iters: Sequence[int]) -> pd.DataFrame:
    """One row per marker for the chart's bands: x, x2 (axis positions), tag (a short label over the
    band), text (the sentence, for the tooltip), kind, color (BAND[kind]), tag_y (the tag's height in
    pixels from the top: loss tags stand a row or two below the score's, alternating, so the tags
    of close bands all read)."""
    rows, n_loss = [], 0
    for m in markers:
        x, x2 = positions(iters, [m.start, m.end])
        if m.kind == "score":
            tag = f"{head_id(*m.head)} {'↑' if m.change >= 0 else '↓'}" if m.head else m.name
        else:
            tag = f"{phase.LOSS_WORDS.get(m.name, m.name)} {'↑' if m.change >= 0 else '↓'}"
        rows.append({"x": x, "x2": max(x2, x + 0.04), "tag": tag, "text": m.text, "kind": m.kind, "color": BAND[m.kind],
                     "tag_y": 4 if m.kind == "score" else 20 + 16 * (n_loss % 2)})  # pixels from the top
        n_loss += m.kind == "loss"
    return pd.DataFrame(rows, columns=["x", "x2", "tag", "text", "kind", "color", "tag_y"])


# -- the curves -------------------------------------------------------------------------------------
def curves_frame(iters: Sequence[int], values: torch.Tensor, selected: str | None = None,
                 movers: Sequence[tuple[int, int]] | None = None) -> pd.DataFrame:
    """Long table, one row per (snapshot, head): x (axis position), iter, head ("L1H2"), value,
    role ("selected", "mover" or "other") and color (the movers' PALETTE colours in `movers` order,
    then the selected head's; GREY for the others). values: (S, L, H); movers default to the MOVERS
    heads that moved most (gpt.phase.top_movers)."""
    v = torch.as_tensor(values).detach().float().cpu()
    S, L, H = v.shape
    movers = phase.top_movers(v, MOVERS) if movers is None else movers
    ids = [head_id(l, h) for l in range(L) for h in range(H)]  # layer-major, as reshape below
    hot = [head_id(*m) for m in movers]
    role = {i: "selected" if i == selected else "mover" if i in hot else "other" for i in ids}
    named = hot + ([selected] if selected in ids and selected not in hot else [])
    color = {i: PALETTE[named.index(i) % len(PALETTE)] if i in named else GREY for i in ids}
    return pd.DataFrame({"x": [float(s) for s in range(S) for _ in ids], "iter": [int(it) for it in iters for _ in ids],
                         "head": ids * S, "value": v.reshape(S * L * H).tolist(),  # (S, L, H) -> (S*L*H,)
                         "role": [role[i] for i in ids] * S, "color": [color[i] for i in ids] * S})


def y_top(values: Sequence[float], score: str) -> float:
    """The top of the chart's y axis: entropy up to its largest value; an attention-mass score (0..1)
    up to a little above its largest value, but at least MASS_TOP, so that noise (a few
    thousandths) stays a flat line while a jump to 0.13 fills most of the chart."""
    vals = [float(v) for v in values if v == v]  # NaN (an undefined score) is not drawn
    peak = max(vals, default=0.0)
    if score == "entropy":
        return max(peak * 1.05, 1.0)
    return min(1.0, max(MASS_TOP, peak * 1.15))


def spread_labels(values: Sequence[float], gap: float) -> list[float]:
    """Heights for labels at ascending `values`, each at least `gap` above the one below, so names
    of heads that end close together do not overlap."""
    out: list[float] = []
    for v in values:
        out.append(v if not out else max(float(v), out[-1] + gap))
    return out


def curves_chart(frame: pd.DataFrame, score: str, iters: Sequence[int], bands: pd.DataFrame | None = None,
                 height: int = 360) -> alt.LayerChart:
    """Every head's `score` over the snapshots (evenly spaced, labelled by iteration): the "other"
    heads thin and grey, the movers and the selected head in their frame colour and named at their
    last point, the selected one thick. `bands` (marker_frame) shade each marker's interval, with a
    dashed rule at its end and its tag on top. Colours are the frames' own (scale=None), so every
    layer draws a head alike. Clicking near a point selects that head (selection PICK_PARAM on
    "head", nearest point; read it with app.views.timeline.chart_pick)."""
    S = len(iters)
    x = alt.X("x:Q", title="iteration (snapshot)", scale=alt.Scale(domain=[0, max(S - 1, 1)], nice=False),
              axis=alt.Axis(values=list(range(S)), labelExpr=f"{[int(i) for i in iters]}[datum.value]",
                            labelOverlap=True, grid=False))
    top = y_top(frame["value"], score)
    y = alt.Y("value:Q", title=label(score), scale=alt.Scale(domain=[0, top], nice=False))
    color = alt.Color("color:N", scale=None, legend=None)
    base = alt.Chart(frame).encode(x=x, y=y, detail="head:N")
    hot = alt.datum.role != "other"
    layers: list[Any] = []
    if bands is not None and len(bands):
        tip = [alt.Tooltip("text:N", title="marker")]
        b = alt.Chart(bands).encode(color=color, tooltip=tip)
        layers += [b.mark_rect(opacity=0.16).encode(x="x:Q", x2="x2:Q"),
                   b.mark_rule(strokeDash=[4, 3], strokeWidth=1.5).encode(x="x2:Q"),
                   b.mark_text(align="right", baseline="top", dx=-4, fontWeight="bold", fontSize=12)
                   .encode(x="x2:Q", y=alt.Y("tag_y:Q", scale=None), text="tag:N")]
    layers.append(base.transform_filter(~hot).mark_line(opacity=0.45, strokeWidth=1).encode(color=color))
    layers.append(base.transform_filter(hot).mark_line().encode(
        color=color, strokeWidth=alt.condition(alt.datum.role == "selected", alt.value(4.5), alt.value(2.2))))
    pick = alt.selection_point(name=PICK_PARAM, fields=["head"], on="click", nearest=True)
    layers.append(base.mark_point(filled=True, size=36, cursor="pointer").encode(
        color=color, opacity=alt.condition(hot, alt.value(0.9), alt.value(0.35)),
        tooltip=[alt.Tooltip("head:N", title="head"), alt.Tooltip("iter:Q", title="iter"),
                 alt.Tooltip("value:Q", title=label(score), format=".3f")]).add_params(pick))
    last = frame[(frame["role"] != "other") & (frame["x"] == frame["x"].max())].sort_values("value")
    layers.append(alt.Chart(last.assign(label_y=spread_labels(list(last["value"]), LABEL_GAP * top)))
                  .mark_text(align="left", dx=7, fontWeight="bold", fontSize=12)
                  .encode(x=x, y=alt.Y("label_y:Q", scale=alt.Scale(domain=[0, top], nice=False)),
                          text="head:N", color=color))
    return alt.layer(*layers).properties(height=height)


def curves_caption(score: str, meta: Mapping[str, Any], n_done: int, n_snapshots: int) -> str:
    """What the chart shows: the score's meaning, what it was measured on (the job's meta), how many
    of the run's snapshots the analysis covers so far, and how to read the colours."""
    n, T = meta.get("n_windows"), meta.get("block")
    on = f"over {n} held-out validation windows of {T} tokens" if n and T else "over held-out validation windows"
    cover = "" if n_done >= n_snapshots else f" The analysis covers {n_done} of the run's {n_snapshots} snapshots so far."
    return (f"{HELP.get(score, score)[0].upper()}{HELP.get(score, score)[1:]}, {on}, at every snapshot. "
            f"The {MOVERS} heads that moved most are in colour and named; click any line to open its head."
            + cover)


# -- top examples -----------------------------------------------------------------------------------
def example_score(score: str, names: Sequence[str]) -> tuple[str, str]:
    """(the score whose top examples to show for `score`, a note saying why when it is another one):
    random repeats are not validation text, so induction_random shows induction_natural's examples."""
    if score == "induction_random" and "induction_natural" in names:
        return "induction_natural", ("Random repeats are not text, so these are the head's top examples of "
                                     "induction on natural repeats.")
    return score, ""


def example_label(rank: int, window: int, value: float) -> str:
    """The example picker's option: "#1 · window 17 · 0.42" (the head's score on that window)."""
    return f"#{rank + 1} · window {window} · {value:.2f}"


@dataclass
class ExampleView:
    """One top example: `html` (the window's tokens shaded by the head's attention from `query`),
    `legend` (its colour scale), `caption` (what is shown, in words), `query` (the position used)."""
    html: str
    legend: str
    caption: str
    query: int


def default_query(pattern: torch.Tensor, ids: Sequence[int], score: str) -> int:
    """The query an example opens on: where the head shows `score` most (gpt.head_examples)."""
    return focus_query(pattern, ids, score)


def example_view(strs: Sequence[str], ids: Sequence[int], pattern: torch.Tensor, score: str, query: int,
                 head: str, it: int) -> ExampleView:
    """The example window `ids` (display strings `strs`) with head `head`'s attention (pattern
    (T, T) at snapshot `it`) from `query`: tokens after the query faded (masked), the query outlined."""
    T = len(ids)
    q = min(max(int(query), 0), T - 1)
    row = pattern[q]  # (T,): where the query attends
    term = query_terms(pattern, ids, score)[q]
    key = int(row.argmax())
    said = "" if bool(term.isnan()) else f"; its {label(score)} term here is {float(term):.2f}"
    caption = (f"{head} at iter {it}, from query position {q} ({esc(repr(strs[q]))}): its strongest key is "
               f"position {key} ({esc(repr(strs[key]))}) with weight {float(row[key]):.2f}{said}.")
    return ExampleView(attention_html(strs, row, q), attention_legend_html(row, q), caption, q)
